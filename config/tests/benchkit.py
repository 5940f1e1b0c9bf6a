"""Shared helpers for the `make bench` benchmarks: bulk data through SQL, timing, reports.

Bulk rows are written with INSERT ... SELECT generate_series through the owner alias
(BYPASSRLS), with deterministic ids (md5 of a label) so runs are comparable. Every
benchmark prints a table and writes its figures to var/bench/<name>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

from django.conf import settings
from django.db import connections

from config.db import partitions

OWNER = "owner"
BENCH_DIR = Path(settings.BASE_DIR) / "var" / "bench"

# provider, model, USD per million input tokens, per million output tokens, weight
MODELS = [
    ("openai", "gpt-4o", "2.500000", "10.000000", 30),
    ("openai", "gpt-4o-mini", "0.150000", "0.600000", 25),
    ("anthropic", "claude-sonnet-4", "3.000000", "15.000000", 20),
    ("anthropic", "claude-haiku-3.5", "0.800000", "4.000000", 10),
    ("gemini", "gemini-2.5-pro", "1.250000", "10.000000", 8),
    ("gemini", "gemini-2.5-flash", "0.300000", "2.500000", 5),
    ("openai", "o3", "2.000000", "8.000000", 2),
]


# --- SQL helpers -----------------------------------------------------------------


def sql(statement: str, params=None, *, alias: str = OWNER):
    with connections[alias].cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else None


def scalar(statement: str, params=None, *, alias: str = OWNER):
    return sql(statement, params, alias=alias)[0][0]


def server_settings() -> dict:
    names = (
        "server_version",
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "max_wal_size",
        "jit",
        "max_parallel_workers_per_gather",
    )
    return {n: scalar(f"SHOW {n}") for n in names}


def _tree_cpu(process) -> float:
    """CPU seconds of a process, its live descendants and the children it already reaped."""
    import psutil

    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def serving_cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by everything that serves a request, by part: the web server's
    process tree, PostgreSQL (the postmaster's tree, found from a backend) and Redis (its INFO).
    Not the load generator: per request, this is the machine's cost of serving, however busy
    the machine is with other work."""
    import psutil
    from django_redis import get_redis_connection

    with connections[OWNER].cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        postmaster = psutil.Process(cur.fetchone()[0]).parent()
    info = get_redis_connection("default").info("cpu")
    redis = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return {"server": _tree_cpu(psutil.Process(server_pid)), "postgresql": _tree_cpu(postmaster), "redis": redis}


def collector_seconds(directory: str | None) -> tuple[float, float]:
    """(collector, process) CPU seconds so far, summed over the web workers that write them to
    `directory` (GC_STATS_DIR, config/collector.py); zeros without one."""
    collector = process = 0.0
    for path in Path(directory).glob("*.json") if directory else ():
        figures = json.loads(path.read_text() or "{}")
        collector += figures.get("collector_s", 0.0)
        process += figures.get("process_s", 0.0)
    return collector, process


@contextlib.contextmanager
def statements_tracked(requests: int) -> Iterator[list[tuple]]:
    """PostgreSQL's own cost of each statement run at least requests/2 times during the block, per
    request: (calls, times planned, planning ms, execution ms, statement, its queryid), most costly
    first. The queryid names a statement across resets, whose text may not: the text is the first
    run's after a reset, constants and all when it runs prepared.
    Yields an empty list, filled after the block; stays empty unless the embedded server was
    started with EMBEDDED_PG_STAT_STATEMENTS=1 (the library must be loaded at start)."""
    import psycopg

    found: list[tuple] = []
    admin = os.environ.get("DATABASE_ADMIN_URL")
    with psycopg.connect(admin, autocommit=True) if admin else contextlib.nullcontext() as conn:
        loaded = conn is not None and "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        if loaded:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        yield found
        if loaded:
            found += conn.execute(
                "SELECT calls, plans, total_plan_time / %(n)s, total_exec_time / %(n)s, regexp_replace(query, '\\s+', ' ', 'g'), queryid "
                "FROM pg_stat_statements WHERE calls >= %(n)s / 2 ORDER BY total_plan_time + total_exec_time DESC",
                {"n": requests},
            ).fetchall()


@contextlib.contextmanager
def profiled(server_pid: int, directory: str | None, name: str) -> Iterator[list[str]]:
    """py-spy (GIL samples, raw stacks) on each worker of the server while the block runs, written
    to directory/name-<pid>.txt; nothing without a directory. Yields the files' paths."""
    import psutil

    if not directory:
        yield []
        return
    os.makedirs(directory, exist_ok=True)
    files, spies = [], []
    for worker in psutil.Process(server_pid).children():
        path = os.path.join(directory, f"{name}-{worker.pid}.txt")
        command = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--gil",
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            path,
            "--pid",
            str(worker.pid),
        ]
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        files.append(path)
    try:
        yield files
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)


def profile_shares(files: list[str], frames: list[str]) -> dict[str, float]:
    """The share of samples (0..1) with each named function anywhere on the stack (raw py-spy
    lines are `frame;frame;... count`, a frame `function (file:line)`)."""
    seen, total = dict.fromkeys(frames, 0), 0
    for path in files:
        with open(path) as file:
            for line in file:
                stack, _, count = line.rstrip().rpartition(" ")
                total += int(count)
                functions = {frame.split(" (", 1)[0] for frame in stack.split(";")}
                for frame in frames:
                    if frame in functions:
                        seen[frame] += int(count)
    return {frame: n / total if total else 0.0 for frame, n in seen.items()}


def machine() -> dict:
    import os

    return {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version()}


def months_back_ensure(table: str, months: int, *, today: date | None = None) -> None:
    """Monthly partitions from `months` months ago to now (and the usual months ahead)."""
    today = today or datetime.now(UTC).date()
    current = partitions.month_start(today)
    for n in range(months, 0, -1):
        partitions.partition_ensure(table, months_ahead=0, today=partitions.month_add(current, -n))
    partitions.partition_ensure(table, today=today)


# --- Population -------------------------------------------------------------------


def population_create(*, users: int = 1000, organizations: int = 100, label: str = "bench") -> list[tuple[str, str]]:
    """`users` users spread over `organizations` organizations (one membership each), by SQL.

    Returns [(user_id, organization_id)] in user order. Also fills the owner session's
    temp tables bench_users(i, user_id, organization_id) and bench_models(i, ...)
    used by ledger_generate().
    """
    sql(
        """INSERT INTO accounts_user (id, password, is_superuser, email, first_name, last_name, display_name, avatar_url,
                                      timezone, locale, role, email_verified, is_active, created_at, updated_at, metadata)
           SELECT md5(%(label)s || '-user-' || i)::uuid, '!', false, %(label)s || '-user' || i || '@example.com', '', '', 'User ' || i, '',
                  'UTC', 'en', 'member', true, true, now() - interval '400 days', now(), '{}'
           FROM generate_series(1, %(users)s) i""",
        {"label": label, "users": users},
    )
    sql(
        """INSERT INTO accounts_organization (id, name, slug, is_personal, auto_join_domain, created_by_id, created_at, updated_at)
           SELECT md5(%(label)s || '-org-' || o)::uuid, 'Org ' || o, %(label)s || '-org-' || o, false, '',
                  md5(%(label)s || '-user-' || o)::uuid, now() - interval '400 days', now()
           FROM generate_series(1, %(orgs)s) o""",
        {"label": label, "orgs": organizations},
    )
    # User i belongs to organization ((i - 1) % orgs) + 1: `users / orgs` members each.
    sql(
        """INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at)
           SELECT md5(%(label)s || '-membership-' || i)::uuid, md5(%(label)s || '-org-' || ((i - 1) %% %(orgs)s + 1))::uuid,
                  md5(%(label)s || '-user-' || i)::uuid, CASE WHEN i <= %(orgs)s THEN 'owner' ELSE 'member' END,
                  now() - interval '400 days'
           FROM generate_series(1, %(users)s) i""",
        {"label": label, "users": users, "orgs": organizations},
    )
    sql("DROP TABLE IF EXISTS bench_users")
    sql(
        """CREATE TEMP TABLE bench_users AS
           SELECT i - 1 AS i, md5(%(label)s || '-user-' || i)::uuid AS user_id,
                  md5(%(label)s || '-org-' || ((i - 1) %% %(orgs)s + 1))::uuid AS organization_id
           FROM generate_series(1, %(users)s) i""",
        {"label": label, "users": users, "orgs": organizations},
    )
    sql("ALTER TABLE bench_users ADD PRIMARY KEY (i)")
    models_table_create()
    return [(str(u), str(o)) for u, o in sql("SELECT user_id, organization_id FROM bench_users ORDER BY i")]


def models_table_create() -> None:
    """bench_models(lo, hi, provider, model, input_price, output_price): weighted ranges over [0, 1)."""
    total = sum(m[4] for m in MODELS)
    rows, acc = [], 0
    for provider, model, in_price, out_price, weight in MODELS:
        rows.append((acc / total, (acc + weight) / total, provider, model, in_price, out_price))
        acc += weight
    sql("DROP TABLE IF EXISTS bench_models")
    sql(
        "CREATE TEMP TABLE bench_models (lo float8, hi float8, provider text, model text, input_price numeric(12, 6), output_price numeric(12, 6))"
    )
    with connections[OWNER].cursor() as cur:
        cur.executemany("INSERT INTO bench_models VALUES (%s, %s, %s, %s, %s, %s)", rows)


def ledger_generate(rows: int, *, months: int, chunk: int = 1_000_000, seed: float = 0.42, progress: bool = False) -> list[dict]:
    """`rows` ledger rows over the last `months` months, in INSERT ... SELECT chunks (one
    transaction, hence one xact_id, each). Users are skewed (a few heavy, a long tail),
    models weighted, tokens long-tailed, ~2% failed calls. Returns per-chunk timings."""
    sql("SELECT setseed(%s)", [seed])
    users = scalar("SELECT count(*) FROM bench_users")
    timings, done = [], 0
    while done < rows:
        n = min(chunk, rows - done)
        t = time.perf_counter()
        sql(
            """INSERT INTO analytics_tokenusage
                   (created_at, user_id, organization_id, provider, model, input_tokens, output_tokens, total_tokens,
                    input_price, output_price, cost, request_id, latency_ms, success, error)
               SELECT g.created_at, u.user_id, u.organization_id, m.provider, m.model, g.input_tokens, g.output_tokens,
                      g.input_tokens + g.output_tokens, m.input_price, m.output_price,
                      round((g.input_tokens * m.input_price + g.output_tokens * m.output_price) / 1000000, 6),
                      'bench-' || g.n, g.latency_ms, g.success, CASE WHEN g.success THEN '' ELSE 'upstream timeout' END
               FROM (
                   SELECT n,
                          now() - random() * (now() - (date_trunc('month', now()) - make_interval(months => %(months)s))) AS created_at,
                          floor(%(users)s * power(random(), 2))::int AS user_i,
                          random() AS model_r,
                          (20 + floor(3000 * power(random(), 3)))::int AS input_tokens,
                          (5 + floor(1500 * power(random(), 2)))::int AS output_tokens,
                          (200 + floor(4000 * random()))::int AS latency_ms,
                          random() >= 0.02 AS success
                   FROM generate_series(%(start)s, %(end)s) n
               ) g
               JOIN bench_users u ON u.i = g.user_i
               JOIN bench_models m ON g.model_r >= m.lo AND g.model_r < m.hi""",
            {"months": months, "users": users, "start": done + 1, "end": done + n},
        )
        elapsed = time.perf_counter() - t
        done += n
        timings.append({"rows": n, "seconds": round(elapsed, 2), "rows_per_s": round(n / elapsed)})
        if progress:
            print(f"    ledger: {done:,}/{rows:,} rows ({n / elapsed:,.0f} rows/s)", flush=True)
    return timings


def vacuum_analyze(*tables: str) -> float:
    t = time.perf_counter()
    for table in tables:
        sql(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - t


# --- Timing and reports -----------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def table(title: str, headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:,.2f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [f"\n== {title} ==", "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))), line]
    for r in cells:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def say(text: str = "") -> None:
    print(text, flush=True)


def report_write(name: str, figures: dict) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgres": server_settings(),
        **figures,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    say(f"   -> {path.relative_to(settings.BASE_DIR)}")
    return path
