"""Benchmark (issue #3): what row-level security costs a list query.

The same list query through the app role (`default`, NOBYPASSRLS) with the user's context
set in the transaction, vs through the privileged role (`privileged`, BYPASSRLS) with the
explicit WHERE. Interleaved, after warm-up, many iterations; only the query itself is
timed (the transaction's first statement, which carries psycopg's BEGIN, is the context
set for the app role and an equivalent one-row SELECT for the privileged role, timed
separately). Django sends each query unprepared (client-side binding), so planning is
part of every query; the ledger query is also timed as a server-side prepared statement
(PREPARE/EXECUTE), where PostgreSQL may switch to a generic plan after five runs.
Server-side planning/execution times (EXPLAIN ANALYZE) and the plans are printed too.
Data: 1,000 users in 100 organizations, 1,000,000 ledger rows over 7 monthly partitions,
100,000 API keys (100 per user).
"""

from __future__ import annotations

import random
import time

import pytest
from django.db import connections, transaction

from config.db import rls
from config.tests import benchkit as bk

USERS, ORGANIZATIONS = 1000, 100
LEDGER_ROWS, LEDGER_MONTHS = 1_000_000, 6
KEYS_PER_USER = 100
ITERATIONS, WARMUP = 2000, 200
SAMPLE_USERS = 20

LEDGER_LIST = (
    "SELECT id, created_at, provider, model, input_tokens, output_tokens, cost FROM analytics_tokenusage "
    "WHERE user_id = %s ORDER BY created_at DESC LIMIT 50"
)
KEYS_LIST = (
    "SELECT id, name, prefix, scopes, is_active, last_used_at, created_at FROM accounts_apikey "
    "WHERE user_id = %s ORDER BY created_at DESC LIMIT 50"
)
LEDGER_PREPARE = (
    "PREPARE bench_ledger_list(uuid) AS SELECT id, created_at, provider, model, input_tokens, output_tokens, cost "
    "FROM analytics_tokenusage WHERE user_id = $1 ORDER BY created_at DESC LIMIT 50"
)
LEDGER_EXECUTE = "EXECUTE bench_ledger_list(%s)"
LEDGER_LIST_POLICY_ONLY = (
    "SELECT id, created_at, provider, model, input_tokens, output_tokens, cost FROM analytics_tokenusage ORDER BY created_at DESC LIMIT 50"
)
KEYS_LIST_POLICY_ONLY = (
    "SELECT id, name, prefix, scopes, is_active, last_used_at, created_at FROM accounts_apikey ORDER BY created_at DESC LIMIT 50"
)


def _api_keys_create() -> None:
    bk.sql(
        """INSERT INTO accounts_apikey (id, user_id, name, prefix, key_hash, scopes, expires_at, last_used_at, is_active, revoked_at, created_at)
           SELECT md5('bench-key-' || u.i || '-' || k)::uuid, u.user_id, 'key ' || k,
                  substr(md5('bench-prefix-' || u.i || '-' || k), 1, 16), md5('bench-hash-' || u.i || '-' || k) || md5('x' || k),
                  ARRAY['chat:read', 'chat:write']::varchar[], NULL, created + interval '1 day', k > 90, CASE WHEN k <= 90 THEN created + interval '30 days' END,
                  created
           FROM bench_users u CROSS JOIN generate_series(1, %s) k
           CROSS JOIN LATERAL (SELECT now() - interval '400 days' + k * interval '4 days' + (u.i %% 97) * interval '1 minute' AS created) c""",
        [KEYS_PER_USER],
    )


def _run(alias: str, prelude: str, prelude_params, query: str, params) -> tuple[float, float, list]:
    """One transaction: the prelude (context or equivalent), then the timed query. µs."""
    with transaction.atomic(using=alias), connections[alias].cursor() as cur:
        t0 = time.perf_counter_ns()
        cur.execute(prelude, prelude_params)
        cur.fetchall()
        t1 = time.perf_counter_ns()
        cur.execute(query, params)
        rows = cur.fetchall()
        t2 = time.perf_counter_ns()
    return (t1 - t0) / 1000, (t2 - t1) / 1000, rows


CONTEXT = "SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)"
NOOP = "SELECT %s::text, %s::text"


def _app(user, query, params):
    return _run("default", CONTEXT, [user[0], user[1]], query, params)


def _privileged(user, query, params):
    return _run("privileged", NOOP, [user[0], user[1]], query, params)


def _explain(alias: str, user, query: str, params, options: str = "ANALYZE, BUFFERS") -> str:
    with transaction.atomic(using=alias), connections[alias].cursor() as cur:
        if alias == "default":
            rls.context_set(user_id=user[0], using=alias)
        cur.execute(f"EXPLAIN ({options}) " + query, params)
        return "\n".join(r[0] for r in cur.fetchall())


def _server_times(alias: str, users: list, query: str, params_for, runs: int = 200) -> dict:
    """Median planning and execution time (ms) the server reports, over the sample users."""
    planning, execution = [], []
    for i in range(runs):
        user = users[i % len(users)]
        lines = _explain(alias, user, query, params_for(user), "ANALYZE, SUMMARY").splitlines()
        planning.append(float(next(l for l in lines if l.startswith("Planning Time")).split()[2]))
        execution.append(float(next(l for l in lines if l.startswith("Execution Time")).split()[2]))
    return {"planning_ms_p50": bk.percentile(planning, 50), "execution_ms_p50": bk.percentile(execution, 50)}


def _compare(name: str, contenders: dict, users: list, iterations: int) -> dict:
    """Interleave the contenders (order shuffled each round) over the sample users."""
    rng = random.Random(3)
    for i in range(WARMUP):
        for fn in contenders.values():
            fn(users[i % len(users)])
    query_us = {k: [] for k in contenders}
    prelude_us = {k: [] for k in contenders}
    for i in range(iterations):
        order = list(contenders)
        rng.shuffle(order)
        for k in order:
            p, q, _ = contenders[k](users[i % len(users)])
            prelude_us[k].append(p)
            query_us[k].append(q)
    return {k: {"query_us": bk.summary(query_us[k]), "prelude_us": bk.summary(prelude_us[k])} for k in contenders}


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_bench_rls_overhead():
    t_setup = time.perf_counter()
    bk.months_back_ensure("analytics_tokenusage", LEDGER_MONTHS)
    population = bk.population_create(users=USERS, organizations=ORGANIZATIONS)
    bk.ledger_generate(LEDGER_ROWS, months=LEDGER_MONTHS)
    _api_keys_create()
    bk.vacuum_analyze("analytics_tokenusage", "accounts_apikey", "accounts_membership", "accounts_user")
    setup_s = time.perf_counter() - t_setup
    assert bk.scalar("SELECT count(*) FROM analytics_tokenusage") == LEDGER_ROWS
    assert bk.scalar("SELECT count(*) FROM accounts_apikey") == USERS * KEYS_PER_USER
    partitions_with_rows = bk.scalar("SELECT count(DISTINCT tableoid) FROM analytics_tokenusage")

    # Sample: users across the skew (heavy, median, light), each with their organization.
    per_user = dict(bk.sql("SELECT user_id::text, count(*) FROM analytics_tokenusage GROUP BY 1"))
    ranked = sorted(population, key=lambda u: -per_user.get(u[0], 0))
    step = max(1, len(ranked) // SAMPLE_USERS)
    users = ranked[::step][:SAMPLE_USERS]

    # Correctness: every variant returns exactly the privileged role's rows.
    for alias in ("default", "privileged"):  # session-level: survives the transactions below
        if not bk.scalar("SELECT count(*) FROM pg_prepared_statements WHERE name = 'bench_ledger_list'", alias=alias):
            bk.sql(LEDGER_PREPARE, alias=alias)
    for user in users:
        _, _, ledger_app = _app(user, LEDGER_LIST, [user[0]])
        _, _, ledger_policy = _app(user, LEDGER_LIST_POLICY_ONLY, None)
        assert ledger_policy == ledger_app
        _, _, ledger_priv = _privileged(user, LEDGER_LIST, [user[0]])
        _, _, ledger_app_prepared = _app(user, LEDGER_EXECUTE, [user[0]])
        _, _, ledger_priv_prepared = _privileged(user, LEDGER_EXECUTE, [user[0]])
        assert ledger_app == ledger_priv == ledger_app_prepared == ledger_priv_prepared
        assert len(ledger_app) == min(50, per_user.get(user[0], 0))
        _, _, keys_app = _app(user, KEYS_LIST, [user[0]])
        _, _, keys_policy = _app(user, KEYS_LIST_POLICY_ONLY, None)
        _, _, keys_priv = _privileged(user, KEYS_LIST, [user[0]])
        assert keys_app == keys_policy == keys_priv and len(keys_app) == 50

    ledger = _compare(
        "ledger",
        {
            "app role + RLS": lambda u: _app(u, LEDGER_LIST, [u[0]]),
            "app role + RLS only (no WHERE)": lambda u: _app(u, LEDGER_LIST_POLICY_ONLY, None),
            "privileged + WHERE": lambda u: _privileged(u, LEDGER_LIST, [u[0]]),
            "app role + RLS, prepared": lambda u: _app(u, LEDGER_EXECUTE, [u[0]]),
            "privileged + WHERE, prepared": lambda u: _privileged(u, LEDGER_EXECUTE, [u[0]]),
        },
        users,
        ITERATIONS,
    )
    keys = _compare(
        "api keys",
        {
            "app role + RLS + WHERE": lambda u: _app(u, KEYS_LIST, [u[0]]),
            "app role + RLS only (no WHERE)": lambda u: _app(u, KEYS_LIST_POLICY_ONLY, None),
            "privileged + WHERE": lambda u: _privileged(u, KEYS_LIST, [u[0]]),
        },
        users,
        ITERATIONS,
    )

    server = {
        "ledger: app role + RLS": _server_times("default", users, LEDGER_LIST, lambda u: [u[0]]),
        "ledger: app role + RLS only (no WHERE)": _server_times("default", users, LEDGER_LIST_POLICY_ONLY, lambda u: None),
        "ledger: privileged + WHERE": _server_times("privileged", users, LEDGER_LIST, lambda u: [u[0]]),
        "api keys: app role + RLS only (no WHERE)": _server_times("default", users, KEYS_LIST_POLICY_ONLY, lambda u: None),
        "api keys: privileged + WHERE": _server_times("privileged", users, KEYS_LIST, lambda u: [u[0]]),
    }
    median, heaviest = users[len(users) // 2], users[0]
    on_median = f"median sample user, {per_user.get(median[0], 0):,} ledger rows"
    on_heaviest = f"heaviest sample user, {per_user.get(heaviest[0], 0):,} ledger rows"
    plans = {
        f"ledger / app role + RLS ({on_median})": _explain("default", median, LEDGER_LIST, [median[0]]),
        f"ledger / app role + RLS only, no WHERE ({on_median})": _explain("default", median, LEDGER_LIST_POLICY_ONLY, None),
        f"ledger / privileged + WHERE ({on_median})": _explain("privileged", median, LEDGER_LIST, [median[0]]),
        f"ledger / app role + RLS, prepared ({on_heaviest})": _explain("default", heaviest, LEDGER_EXECUTE, [heaviest[0]]),
        f"ledger / privileged + WHERE, prepared ({on_heaviest})": _explain("privileged", heaviest, LEDGER_EXECUTE, [heaviest[0]]),
        f"api keys / app role + RLS only, no WHERE ({on_median})": _explain("default", median, KEYS_LIST_POLICY_ONLY, None),
        f"api keys / privileged + WHERE ({on_median})": _explain("privileged", median, KEYS_LIST, [median[0]]),
    }
    for alias in ("default", "privileged"):
        bk.sql("DEALLOCATE bench_ledger_list", alias=alias)

    bk.say(
        f"\n### RLS overhead: {ITERATIONS:,} interleaved iterations per variant after {WARMUP} warm-up, "
        f"{len(users)} users cycled; ledger {LEDGER_ROWS:,} rows in {partitions_with_rows} partitions, "
        f"{USERS * KEYS_PER_USER:,} API keys; setup {setup_s:.1f}s"
    )
    rows = []
    figures = {}
    for title, result in (("ledger: 50 most recent rows of a user", ledger), ("api keys: 50 most recent keys of a user", keys)):
        for variant, r in result.items():
            baseline = "privileged + WHERE, prepared" if variant.endswith("prepared") else "privileged + WHERE"
            base = result[baseline]["query_us"]
            q = r["query_us"]
            overhead = (q["p50"] - base["p50"]) / base["p50"] * 100
            overhead_mean = (q["mean"] - base["mean"]) / base["mean"] * 100
            rows.append(
                [
                    f"{title.split(':')[0]}: {variant}",
                    q["p50"],
                    q["p95"],
                    q["mean"],
                    "-" if variant == baseline else f"{overhead:+.1f}%",
                    "-" if variant == baseline else f"{overhead_mean:+.1f}%",
                    r["prelude_us"]["p50"],
                ]
            )
        figures[title] = result
    bk.say(
        bk.table(
            "query time (µs, client side); overhead vs privileged + explicit WHERE (prepared vs prepared); "
            "prelude = BEGIN + first statement (set_config for the app role, a 2-column SELECT for the privileged role)",
            ["variant", "p50 µs", "p95 µs", "mean µs", "overhead p50", "overhead mean", "prelude p50 µs"],
            rows,
        )
    )
    bk.say(
        bk.table(
            "server side, EXPLAIN (ANALYZE, SUMMARY) medians over the sample users (ms)",
            ["variant", "planning ms", "execution ms"],
            [[k, v["planning_ms_p50"], v["execution_ms_p50"]] for k, v in server.items()],
        )
    )
    for name, plan in plans.items():
        bk.say(f"\n-- EXPLAIN (ANALYZE, BUFFERS) {name}\n{plan}")
    bk.report_write(
        "rls_overhead",
        {
            "iterations": ITERATIONS,
            "warmup": WARMUP,
            "sample_users": len(users),
            "ledger_rows": LEDGER_ROWS,
            "ledger_partitions_with_rows": partitions_with_rows,
            "api_keys": USERS * KEYS_PER_USER,
            "setup_seconds": round(setup_s, 1),
            "results": figures,
            "server_times_ms": server,
            "plans": plans,
        },
    )


# --- Organization policies: the ones that read app_organization_ids() ----------------------

ORG_ITERATIONS = 1000
ROLLUP_DAYS, ROLLUP_MODELS = 90, 3
MEMBER_USAGE = (
    "SELECT user_id, sum(total_tokens), sum(cost) FROM analytics_usagerollup "
    "WHERE period = 'day' AND organization_id = %s AND period_start >= current_date - 30 GROUP BY user_id ORDER BY user_id"
)
MEMBERS_LIST = "SELECT id, user_id, role, created_at FROM accounts_membership WHERE organization_id = %s ORDER BY created_at, id"
MEMBERS_LIST_POLICY_ONLY = "SELECT id, user_id, role, created_at FROM accounts_membership ORDER BY created_at, id"


def _rollups_create() -> None:
    """Daily rollups: every user, every day of the last ROLLUP_DAYS, ROLLUP_MODELS models."""
    bk.sql(
        """INSERT INTO analytics_usagerollup (period, period_start, organization_id, user_id, provider, model, input_tokens,
                                             output_tokens, total_tokens, calls, errors, cost, updated_at)
           SELECT 'day', current_date - d, u.organization_id, u.user_id, 'openai', 'model-' || m, 1000 + u.i + d, 500 + m,
                  1500 + u.i + d + m, 3, 0, (u.i %% 7 + m) * 0.0125, now()
           FROM bench_users u CROSS JOIN generate_series(0, %s - 1) d CROSS JOIN generate_series(1, %s) m""",
        [ROLLUP_DAYS, ROLLUP_MODELS],
    )


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_bench_rls_organization_policies():
    """Queries whose policy reads the caller's organizations (app_organization_ids())."""
    t_setup = time.perf_counter()
    population = bk.population_create(users=USERS, organizations=ORGANIZATIONS)
    _rollups_create()
    bk.vacuum_analyze("analytics_usagerollup", "accounts_membership", "accounts_organization", "accounts_user")
    setup_s = time.perf_counter() - t_setup
    rollups = bk.scalar("SELECT count(*) FROM analytics_usagerollup")
    assert rollups == USERS * ROLLUP_DAYS * ROLLUP_MODELS
    users = population[:: max(1, len(population) // SAMPLE_USERS)][:SAMPLE_USERS]
    members = USERS // ORGANIZATIONS

    # Correctness: the app role sees exactly its organization's rows, as the privileged role does with a WHERE.
    for user in users:
        _, _, usage_app = _app(user, MEMBER_USAGE, [user[1]])
        _, _, usage_priv = _privileged(user, MEMBER_USAGE, [user[1]])
        assert usage_app == usage_priv and len(usage_app) == members
        _, _, members_app = _app(user, MEMBERS_LIST, [user[1]])
        _, _, members_policy = _app(user, MEMBERS_LIST_POLICY_ONLY, None)
        _, _, members_priv = _privileged(user, MEMBERS_LIST, [user[1]])
        assert members_app == members_policy == members_priv and len(members_app) == members

    usage = _compare(
        "member usage",
        {
            "app role + RLS + WHERE": lambda u: _app(u, MEMBER_USAGE, [u[1]]),
            "privileged + WHERE": lambda u: _privileged(u, MEMBER_USAGE, [u[1]]),
        },
        users,
        ORG_ITERATIONS,
    )
    memberships = _compare(
        "memberships",
        {
            "app role + RLS + WHERE": lambda u: _app(u, MEMBERS_LIST, [u[1]]),
            "app role + RLS only (no WHERE)": lambda u: _app(u, MEMBERS_LIST_POLICY_ONLY, None),
            "privileged + WHERE": lambda u: _privileged(u, MEMBERS_LIST, [u[1]]),
        },
        users,
        ORG_ITERATIONS,
    )
    median = users[len(users) // 2]
    plans = {
        "member usage / app role + RLS + WHERE": _explain("default", median, MEMBER_USAGE, [median[1]]),
        "member usage / privileged + WHERE": _explain("privileged", median, MEMBER_USAGE, [median[1]]),
        "memberships / app role + RLS only, no WHERE": _explain("default", median, MEMBERS_LIST_POLICY_ONLY, None),
    }
    bk.say(
        f"\n### RLS organization policies: {ORG_ITERATIONS:,} interleaved iterations per variant after {WARMUP} warm-up, "
        f"{len(users)} users cycled; {rollups:,} daily rollups, {USERS:,} memberships in {ORGANIZATIONS} organizations; "
        f"setup {setup_s:.1f}s"
    )
    rows = []
    for title, result in (("member usage: 30 days of an organization by member", usage), ("memberships: an organization's", memberships)):
        base = result["privileged + WHERE"]["query_us"]
        for variant, r in result.items():
            q = r["query_us"]
            rows.append(
                [
                    f"{title.split(':')[0]}: {variant}",
                    q["p50"],
                    q["p95"],
                    q["mean"],
                    "-" if variant == "privileged + WHERE" else f"{(q['p50'] - base['p50']) / base['p50'] * 100:+.1f}%",
                    "-" if variant == "privileged + WHERE" else f"{(q['mean'] - base['mean']) / base['mean'] * 100:+.1f}%",
                    r["prelude_us"]["p50"],
                ]
            )
    bk.say(
        bk.table(
            "query time (µs, client side); overhead vs privileged + explicit WHERE",
            ["variant", "p50 µs", "p95 µs", "mean µs", "overhead p50", "overhead mean", "prelude p50 µs"],
            rows,
        )
    )
    for name, plan in plans.items():
        bk.say(f"\n-- EXPLAIN (ANALYZE, BUFFERS) {name}\n{plan}")
    bk.report_write(
        "rls_organization_policies",
        {
            "iterations": ORG_ITERATIONS,
            "warmup": WARMUP,
            "sample_users": len(users),
            "rollups": rollups,
            "setup_seconds": round(setup_s, 1),
            "results": {"member usage": usage, "memberships": memberships},
            "plans": plans,
        },
    )
