"""Benchmarks of the usage ledger: ingestion, rollup, and the usage summary endpoint.

Figures only (no speed thresholds); each asserts that its result is right. Bulk data is
written by SQL through the owner alias (config/tests/benchkit.py): 1,000 users in 100
organizations, seven weighted models, skewed users, rows spread over monthly partitions.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone

from accounts.models import User
from analytics import services
from config.db import rls
from config.tests import benchkit as bk

COLUMNS = (
    "created_at",
    "user_id",
    "organization_id",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_price",
    "output_price",
    "cost",
    "request_id",
    "latency_ms",
    "success",
    "error",
)


# --- 2. Ingestion ---------------------------------------------------------------------

INGEST_BATCHES, INGEST_BATCH_ROWS, INGEST_WARMUP_BATCHES = 50, 1000, 2


def _records(user_id: str, organization_id: str, batch: int, rng: random.Random, now) -> list[dict]:
    records = []
    for i in range(INGEST_BATCH_ROWS):
        provider, model, in_price, out_price, _ = rng.choices(bk.MODELS, weights=[m[4] for m in bk.MODELS])[0]
        success = rng.random() >= 0.02
        records.append(
            {
                "user_id": user_id,
                "organization_id": organization_id,
                "provider": provider,
                "model": model,
                "input_tokens": 20 + int(3000 * rng.random() ** 3),
                "output_tokens": 5 + int(1500 * rng.random() ** 2),
                "input_price": Decimal(in_price),
                "output_price": Decimal(out_price),
                "request_id": f"ingest-{batch}-{i}",
                "latency_ms": 200 + rng.randrange(4000),
                "success": success,
                "error": "" if success else "upstream timeout",
                "created_at": now - timedelta(milliseconds=batch * INGEST_BATCH_ROWS + i),
            }
        )
    return records


def _copy_row(r: dict) -> tuple:
    cost = services.usage_cost(
        input_tokens=r["input_tokens"], output_tokens=r["output_tokens"], input_price=r["input_price"], output_price=r["output_price"]
    )
    return (
        r["created_at"],
        r["user_id"],
        r["organization_id"],
        r["provider"],
        r["model"],
        r["input_tokens"],
        r["output_tokens"],
        r["input_tokens"] + r["output_tokens"],
        r["input_price"],
        r["output_price"],
        cost,
        r["request_id"],
        r["latency_ms"],
        r["success"],
        r["error"],
    )


def _ingest_service(user, records) -> float:
    t = time.perf_counter()
    with transaction.atomic():
        rls.context_set(user_id=user[0])
        written = services.usage_record_batch(records=records)
    elapsed = time.perf_counter() - t
    assert written == len(records)
    return elapsed


def _ingest_copy(rows: list[tuple]) -> float:
    t = time.perf_counter()
    with transaction.atomic(using=bk.OWNER), connections[bk.OWNER].cursor() as cur:
        with cur.copy(f"COPY analytics_tokenusage ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return time.perf_counter() - t


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_bench_ledger_ingestion():
    population = bk.population_create(users=1000, organizations=100)
    rng = random.Random(7)
    now = timezone.now()
    batches = [(population[b], _records(*population[b], b, rng, now)) for b in range(INGEST_WARMUP_BATCHES + INGEST_BATCHES)]
    warmup, timed = batches[:INGEST_WARMUP_BATCHES], batches[INGEST_WARMUP_BATCHES:]
    for user, records in warmup:
        _ingest_service(user, records)
        _ingest_copy([_copy_row(r) for r in records])
    bk.vacuum_analyze("analytics_tokenusage", "analytics_usagerequest")

    # Alternate the two paths batch by batch (same rows, same order) so load noise hits both.
    service_s, copy_s = [], []
    for user, records in timed:
        service_s.append(_ingest_service(user, records))
        rows = [_copy_row(r) for r in records]  # building the tuples is not timed
        copy_s.append(_ingest_copy(rows))
    all_rows = [_copy_row(r) for _, records in timed for r in records]
    copy_single_s = _ingest_copy(all_rows)

    # Correctness: every timed request id is in the ledger three times (service, COPY per batch,
    # one COPY), the three rows identical; the service recorded each request id once.
    n = INGEST_BATCHES * INGEST_BATCH_ROWS
    warm = INGEST_WARMUP_BATCHES * INGEST_BATCH_ROWS
    assert bk.scalar("SELECT count(*) FROM analytics_tokenusage") == 2 * warm + 3 * n
    assert bk.scalar("SELECT count(*) FROM analytics_usagerequest") == warm + n
    identical = bk.scalar(
        f"""SELECT count(*) FROM (
                SELECT request_id FROM analytics_tokenusage
                WHERE request_id LIKE 'ingest-%%' AND request_id NOT IN (SELECT r FROM unnest(%s::text[]) r)
                GROUP BY request_id
                HAVING count(*) = 3 AND count(DISTINCT ({", ".join(COLUMNS)})) = 1) x""",
        [[r["request_id"] for _, records in warmup for r in records]],
    )
    assert identical == n
    expected_cost = sum(row[10] for row in all_rows)
    assert bk.scalar("SELECT sum(cost) FROM analytics_tokenusage WHERE request_id LIKE 'ingest-%%'") == 3 * expected_cost + 2 * sum(
        _copy_row(r)[10] for _, records in warmup for r in records
    )

    service_total, copy_total = sum(service_s), sum(copy_s)
    figures = {
        "batches": INGEST_BATCHES,
        "rows_per_batch": INGEST_BATCH_ROWS,
        "rows": n,
        "usage_record_batch": {
            "seconds": service_total,
            "rows_per_s": n / service_total,
            "batch_ms": bk.summary([s * 1000 for s in service_s]),
        },
        "copy_per_batch": {"seconds": copy_total, "rows_per_s": n / copy_total, "batch_ms": bk.summary([s * 1000 for s in copy_s])},
        "copy_single": {"seconds": copy_single_s, "rows_per_s": n / copy_single_s},
    }
    bk.say(
        f"\n### Ledger ingestion: {INGEST_BATCHES} batches x {INGEST_BATCH_ROWS:,} rows (one user each), "
        f"after {INGEST_WARMUP_BATCHES} warm-up batches; the two paths alternate batch by batch"
    )
    bk.say(
        bk.table(
            "rows/s (higher is better); ratio = COPY rows/s over usage_record_batch rows/s",
            ["path", "rows", "seconds", "rows/s", "batch p50 ms", "batch p95 ms", "ratio"],
            [
                [
                    "usage_record_batch (app role, RLS, atomic)",
                    n,
                    service_total,
                    n / service_total,
                    figures["usage_record_batch"]["batch_ms"]["p50"],
                    figures["usage_record_batch"]["batch_ms"]["p95"],
                    "1.00x",
                ],
                [
                    f"COPY FROM STDIN, {INGEST_BATCHES} x {INGEST_BATCH_ROWS:,} (owner)",
                    n,
                    copy_total,
                    n / copy_total,
                    figures["copy_per_batch"]["batch_ms"]["p50"],
                    figures["copy_per_batch"]["batch_ms"]["p95"],
                    f"{service_total / copy_total:.2f}x",
                ],
                [
                    f"COPY FROM STDIN, 1 x {n:,} (owner)",
                    n,
                    copy_single_s,
                    n / copy_single_s,
                    "-",
                    "-",
                    f"{service_total / copy_single_s:.2f}x",
                ],
            ],
        )
    )
    figures["ratio_copy_per_batch"] = service_total / copy_total
    figures["ratio_copy_single"] = service_total / copy_single_s
    bk.report_write("ledger_ingestion", figures)


# --- 3. Rollup of 1,000,000 rows -------------------------------------------------------

ROLLUP_ROWS, ROLLUP_MONTHS, ROLLUP_ROUNDS = 1_000_000, 6, 2
ROLLUP_COLUMNS = (
    "period, period_start, organization_id, user_id, provider, model, input_tokens, output_tokens, total_tokens, calls, errors, cost"
)

HAND_ROLLUP = """
INSERT INTO bench_rollup_check AS r
    (period, period_start, organization_id, user_id, provider, model,
     input_tokens, output_tokens, total_tokens, calls, errors, cost, updated_at)
SELECT p.period,
       CASE p.period WHEN 'day' THEN (t.created_at AT TIME ZONE 'UTC')::date
                     ELSE date_trunc('month', t.created_at AT TIME ZONE 'UTC')::date END,
       t.organization_id, t.user_id, t.provider, t.model,
       sum(t.input_tokens), sum(t.output_tokens), sum(t.total_tokens), count(*),
       count(*) FILTER (WHERE NOT t.success), sum(t.cost), now()
FROM analytics_tokenusage t CROSS JOIN (VALUES ('day'), ('month')) AS p(period)
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT (period, period_start, organization_id, user_id, provider, model) DO UPDATE SET
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
    total_tokens = r.total_tokens + EXCLUDED.total_tokens,
    calls = r.calls + EXCLUDED.calls,
    errors = r.errors + EXCLUDED.errors,
    cost = r.cost + EXCLUDED.cost,
    updated_at = EXCLUDED.updated_at
"""


def _rollups_reset() -> None:
    """Empty rollups and watermark; a fresh copy table. The copy is a regular table (WAL,
    shared buffers, the same indexes) like the real one: a TEMP table would run its index
    maintenance in temp_buffers (8MB by default) and measure that instead."""
    bk.sql("TRUNCATE analytics_usagerollup")
    bk.sql("DELETE FROM analytics_rollupwatermark")
    bk.sql("DROP TABLE IF EXISTS bench_rollup_check")
    bk.sql("CREATE TABLE bench_rollup_check (LIKE analytics_usagerollup INCLUDING ALL)")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _rollup_difference(a: str, b: str) -> int:
    return bk.scalar(
        f"SELECT count(*) FROM ((SELECT {ROLLUP_COLUMNS} FROM {a} EXCEPT ALL SELECT {ROLLUP_COLUMNS} FROM {b}) "
        f"UNION ALL (SELECT {ROLLUP_COLUMNS} FROM {b} EXCEPT ALL SELECT {ROLLUP_COLUMNS} FROM {a})) d"
    )


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_bench_rollup_of_a_million_rows():
    bk.months_back_ensure("analytics_tokenusage", ROLLUP_MONTHS)
    bk.population_create(users=1000, organizations=100)
    generate = bk.ledger_generate(ROLLUP_ROWS, months=ROLLUP_MONTHS)
    bk.vacuum_analyze("analytics_tokenusage")
    ledger = bk.sql(
        "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(total_tokens), "
        "count(*) FILTER (WHERE NOT success), sum(cost) FROM analytics_tokenusage"
    )[0]
    assert ledger[0] == ROLLUP_ROWS

    rounds = []
    try:
        for round_ in range(ROLLUP_ROUNDS):
            _rollups_reset()
            result, timings = {}, {}

            def service():
                timings["usage_rollup"] = _timed(lambda: result.update(r=services.usage_rollup()))

            def hand():
                timings["hand_written"] = _timed(lambda: bk.sql(HAND_ROLLUP))

            for step in (service, hand) if round_ % 2 == 0 else (hand, service):  # alternate who goes first
                step()
            assert result["r"].ran and result["r"].rows == ROLLUP_ROWS
            timings["watermark_count"] = _timed(
                lambda: bk.sql(
                    "SELECT count(*) FROM analytics_tokenusage WHERE xact_id >= '0'::xid8 AND xact_id < %s::xid8", [result["r"].horizon]
                )
            )
            timings["first"] = "usage_rollup" if round_ % 2 == 0 else "hand_written"
            rounds.append(timings)

        # Correctness: both rollups are the same rows, and each period's totals equal the ledger's.
        assert _rollup_difference("analytics_usagerollup", "bench_rollup_check") == 0
        totals_by_table = {
            table: {
                period: bk.sql(
                    "SELECT sum(calls), sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(errors), sum(cost) "
                    f"FROM {table} WHERE period = %s",
                    [period],
                )[0]
                for period in ("day", "month")
            }
            for table in ("analytics_usagerollup", "bench_rollup_check")
        }
    finally:
        bk.sql("DROP TABLE IF EXISTS bench_rollup_check")
    for table, by_period in totals_by_table.items():
        for period, totals in by_period.items():
            assert totals == ledger, (table, period, totals, ledger)
    groups = dict(bk.sql("SELECT period, count(*) FROM analytics_usagerollup GROUP BY 1"))

    best = {k: min(r[k] for r in rounds) for k in ("usage_rollup", "hand_written", "watermark_count")}
    bk.say(
        f"\n### Rollup of {ROLLUP_ROWS:,} ledger rows over {ROLLUP_MONTHS + 1} monthly partitions into an empty rollup table "
        f"({groups['day']:,} day rows + {groups['month']:,} month rows); ledger generated in {generate[0]['seconds']:.1f}s; "
        f"{ROLLUP_ROUNDS} rounds"
    )
    rows = [
        ["usage_rollup() (worker role, watermark, advisory lock)", *[r["usage_rollup"] for r in rounds], best["usage_rollup"], "1.00x"],
        [
            "hand-written INSERT ... SELECT ... GROUP BY ... ON CONFLICT (owner, copy table)",
            *[r["hand_written"] for r in rounds],
            best["hand_written"],
            f"{best['usage_rollup'] / best['hand_written']:.2f}x",
        ],
        [
            "  of which usage_rollup's count(*) over the xact_id range",
            *[r["watermark_count"] for r in rounds],
            best["watermark_count"],
            "-",
        ],
    ]
    bk.say(
        bk.table(
            "seconds (lower is better); speed-up = usage_rollup() best over this best; "
            "round 1: usage_rollup() first, round 2: hand-written first",
            ["variant", *[f"round {i + 1} s" for i in range(ROLLUP_ROUNDS)], "best s", "speed-up"],
            rows,
        )
    )
    bk.say(f"   identical rows in both; totals equal the ledger: {ledger[0]:,} calls, {ledger[3]:,} tokens, ${ledger[5]:,} cost")
    bk.report_write(
        "rollup_1m",
        {
            "ledger_rows": ROLLUP_ROWS,
            "months": ROLLUP_MONTHS + 1,
            "rollup_rows": groups,
            "generate": generate,
            "rounds_seconds": rounds,
            "best_seconds": best,
            "ledger_totals": [str(v) for v in ledger],
        },
    )


# --- 4. Usage summary endpoint over 10,000,000 rows ------------------------------------

SUMMARY_ROWS, SUMMARY_MONTHS, SUMMARY_CHUNK = 10_000_000, 11, 1_000_000
SUMMARY_USERS, SUMMARY_REQUESTS, SUMMARY_WARMUP = 5, 300, 30
SUMMARY_URL = "/api/v1/usage/summary?period=month"


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_bench_usage_summary_over_ten_million_rows():
    bk.months_back_ensure("analytics_tokenusage", SUMMARY_MONTHS)
    population = bk.population_create(users=1000, organizations=100)
    bk.say(f"\n    generating {SUMMARY_ROWS:,} ledger rows over {SUMMARY_MONTHS + 1} months in chunks of {SUMMARY_CHUNK:,}...")
    t = time.perf_counter()
    generate = bk.ledger_generate(SUMMARY_ROWS, months=SUMMARY_MONTHS, chunk=SUMMARY_CHUNK, progress=True)
    generate_s = time.perf_counter() - t
    vacuum_s = bk.vacuum_analyze("analytics_tokenusage")
    assert bk.scalar("SELECT count(*) FROM analytics_tokenusage") == SUMMARY_ROWS
    result = {}
    rollup_s = _timed(lambda: result.update(r=services.usage_rollup()))
    assert result["r"].rows == SUMMARY_ROWS
    rollup_rows = bk.scalar("SELECT count(*) FROM analytics_usagerollup")

    # A handful of users across the skew, each signed in on their own client.
    per_user = dict(bk.sql("SELECT user_id::text, count(*) FROM analytics_tokenusage GROUP BY 1"))
    ranked = sorted(population, key=lambda u: -per_user.get(u[0], 0))
    chosen = [ranked[i] for i in (0, len(ranked) // 10, len(ranked) // 3, len(ranked) // 2, len(ranked) - 1)][:SUMMARY_USERS]
    clients = []
    for user_id, _ in chosen:
        client = Client()
        client.force_login(User.objects.using("privileged").get(pk=user_id))
        clients.append((user_id, client))

    # Correctness: each answer equals the ledger's totals of the user this month (UTC).
    month = "date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    for user_id, client in clients:
        response = client.get(SUMMARY_URL)
        assert response.status_code == 200, (response.status_code, response.content[:500])
        body = response.json()
        calls, tokens, cost = bk.sql(
            f"SELECT count(*), COALESCE(sum(total_tokens), 0), COALESCE(sum(cost), 0) "
            f"FROM analytics_tokenusage WHERE user_id = %s AND created_at >= {month}",
            [user_id],
        )[0]
        assert (body["calls"], body["total_tokens"], Decimal(body["cost"])) == (calls, tokens, cost), (body, calls, tokens, cost)

    for i in range(SUMMARY_WARMUP):
        clients[i % len(clients)][1].get(SUMMARY_URL)
    times_ms = []
    for i in range(SUMMARY_REQUESTS):
        client = clients[i % len(clients)][1]
        t = time.perf_counter()
        response = client.get(SUMMARY_URL)
        times_ms.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200
    s = bk.summary(times_ms)

    bk.say(
        f"\n### Usage summary endpoint: {SUMMARY_ROWS:,} ledger rows over {SUMMARY_MONTHS + 1} monthly partitions, "
        f"{rollup_rows:,} rollup rows; {len(clients)} users (session auth, Django test Client), "
        f"{SUMMARY_REQUESTS} requests after {SUMMARY_WARMUP} warm-up"
    )
    bk.say(
        bk.table(
            "setup",
            ["step", "seconds", "rows/s"],
            [
                [
                    f"generate {SUMMARY_ROWS:,} ledger rows (INSERT ... SELECT, {len(generate)} chunks)",
                    generate_s,
                    SUMMARY_ROWS / generate_s,
                ],
                ["VACUUM (ANALYZE) analytics_tokenusage", vacuum_s, "-"],
                [f"usage_rollup() of {SUMMARY_ROWS:,} rows from empty", rollup_s, SUMMARY_ROWS / rollup_s],
            ],
        )
    )
    bk.say(
        bk.table(
            f"GET {SUMMARY_URL} (ms, in-process: no network, no web server)",
            ["endpoint", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms"],
            [["usage summary, period=month", s["p50"], s["p95"], s["p99"], s["mean"], s["max"]]],
        )
    )
    bk.report_write(
        "usage_summary_10m",
        {
            "ledger_rows": SUMMARY_ROWS,
            "months": SUMMARY_MONTHS + 1,
            "rollup_rows": rollup_rows,
            "generate_seconds": generate_s,
            "generate_chunks": generate,
            "vacuum_seconds": vacuum_s,
            "usage_rollup_seconds": rollup_s,
            "users": [{"user_id": u, "ledger_rows": per_user.get(u, 0)} for u, _ in clients],
            "requests": SUMMARY_REQUESTS,
            "warmup": SUMMARY_WARMUP,
            "latency_ms": s,
        },
    )
