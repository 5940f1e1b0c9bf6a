"""Benchmark (issue #10): requests/s and latency under the ASGI server, as production serves.

gunicorn with 2 uvicorn workers on loopback against the bench database (the pool on,
DEBUG off), then 2 sync WSGI workers as the baseline ASGI replaces, each driven by a
separate load process (config/tests/serving_load.py: asyncio + httpx) with 32 concurrent
keep-alive clients sending a fixed number of requests per target, after a warm-up.
Targets: a bare Django view answering a chat reply's JSON (the framework's floor: every
middleware, no auth, no queries), /health/live, an API-key `GET /api/v1/usage/summary`
(authentication, RLS context, throttle, queries), and the metered message path: an API-key
`POST /api/v1/conversations/{conversation_id}/messages` without streaming, answered by the echo
provider with no per-word delay (CHAT_ECHO_DELAY=0), through authentication, RLS, the
entitlement check (the organization is on Enterprise with no rate limit, so nothing is
refused), both messages stored, the ledger row and the counters. Each server gets fresh
conversations, at most about SENDS_PER_CONVERSATION sends each whatever the client count, so histories
stay short (about 20 messages).
After the table: the metered path's p50 over the bare view's, its requests/s per core, and the
serving CPU per request (server, PostgreSQL and Redis processes, not the load generator):
requests/s on a shared machine measure the machine's other work too; CPU per request does not.
Plug in another target with
  BENCH_SERVING_TARGET="PATCH /api/v1/conversations/{conversation_id}" BENCH_SERVING_BODY='{"title": "Hi"}'
where {user_id}, {organization_id} and {conversation_id} are filled in.
BENCH_SERVING_SERVERS="ASGI uvicorn" runs one server only (names as in SERVERS, comma-separated);
BENCH_SERVING_WORKERS=4 and BENCH_SERVING_CONCURRENCY=1 change the worker and client counts (issue #10: 2 and 32).
BENCH_SERVING_RATE=100 sends an open load of 100 requests/s instead of the closed loop (each
request due at its time, latency counted from then; at most CONCURRENCY in flight): at 32 clients
in a closed loop p50 is queueing, about 32 divided by the throughput, so the p50 a request adds
is measured at a load both the bare view and the metered path sustain.
BENCH_SERVING_PROFILE_DIR=var/bench/profile records each worker with py-spy (GIL samples, raw
stacks, one file per worker) during the metered POST and prints where its time goes; the
profiler slows the server, so its run's figures are not comparable with others.
EMBEDDED_PG_STAT_STATEMENTS=1 starts the throwaway PostgreSQL with pg_stat_statements and prints,
for the metered POST, PostgreSQL's planning and execution time per request by statement.
The per-key API throttle stays on but high enough never to answer 429.

Findings (2026-11-29, 2 shared cores, load 3-10; figures in var/bench/serving.json):
- Pool exhaustion: a non-streaming send keeps the request's connection (RLS middleware
  transaction) while message_send takes a second one on its own thread. With the default pool
  (8 per alias and worker) and 16 requests in flight per worker, every connection is held by a
  request waiting for a second: each waits DATABASE_POOL_TIMEOUT (10 s), then 500 (193 of 300 at
  32 clients). The bench then sized the pool at 40; fixed since (see 2026-11-30, second session).
- Sync views under ASGI: Django enters a ThreadSensitiveContext per request (a new one-thread
  executor, so requests are not serialized on one thread), and with sync-only middlewares
  (ApiLog, ApiNotFound, WhiteNoise, RLS, AuditContext, SessionActivity) a request crosses
  event loop <-> thread four times; the send adds async_to_sync -> thread -> async_to_sync(echo)
  hops. Each hop waits for the loop and the GIL among up to 16 threads per worker: the tail.
  uvloop and httptools are already used (uvicorn's "auto"), so --loop/--http change nothing.
- One client at a time (BENCH_SERVING_CONCURRENCY=1) the metered POST took about 28 ms p50
  (bare view 3-6 ms): about 30 round trips (20 statements, 4 BEGIN/COMMIT, 3 Redis scripts)
  plus DRF (under cProfile, in-process: API-key authentication 4 ms, response serializers 4 ms).

Findings (2026-11-30, 2 cores, load under 1 before the run):
- The send is now 11 statements (chat/tests/test_query_budget.py has the arithmetic): the API key
  and its owner in one query, the conversation locked at its first read, both messages in one
  INSERT, the price from the process's catalog, no re-read for the answer. Metered POST at 32
  clients: 75.1 req/s, p50 385 ms (50.4 req/s, p50 610 ms before); serving CPU 22.4 ms a message.
- Serving CPU per request (server + PostgreSQL + Redis, not the load process) says why 150
  req/s per core is out of reach on this stack: a core gives 6.7 ms a request, and the bare
  Django view alone uses 3.2 ms under ASGI (1.2 ms under WSGI: the thread hops above cost ~2 ms).
  Under py-spy --gil (one client), the send's Python time is message_prepare 45% (Django's
  UNNEST bulk insert of the two messages alone 12%), the finish 18%, uvicorn 11%, API throttle
  5%, authentication 4%, serializers 3%; PostgreSQL's share is ~5 ms a message. Preparing every
  statement (server-side binding, prepare_threshold 5) changed nothing measurable (19.9 vs 19.8 ms
  at one client), so it was not kept.
- Run to run (same code, 2026-11-30, two runs): the metered POST's serving CPU under ASGI was
  17.9 and 23.2 ms, under WSGI 17.5 and 15.2 ms; the bare view 3.5 and 3.3 ms. Compare CPU
  figures across several runs, not one: the loop <-> thread hops of 16 requests in flight per
  worker cost differently each time.

Findings (2026-11-30, second session, load 7 from other work during the run):
- Django's ASGI handler loads the middleware chain in async mode, and MiddlewareMixin then runs
  each process_request/process_response through sync_to_async: seven loop <-> thread crossings
  for one sync view (config/tests/test_asgi_handler.py counts them). config/asgi.py's
  OneHopASGIHandler loads the chain in sync mode and crosses once. Same run, both handlers:
  serving CPU, bare view 3.27 -> 2.21 ms, usage summary 10.31 -> 8.77 ms; the metered POST
  17.75 -> 18.13 ms (no change beyond noise: its cost is elsewhere).
- Where the metered POST's CPU goes (BENCH_SERVING_SERVERS="ASGI uvicorn", 2,000 requests):
  16.92 ms = server 11.87 + PostgreSQL 4.80 + Redis 0.25. Timed client-side in one process,
  the 11 statements are flat (0.35 to 0.98 ms each; the ledger's one-row INSERT is the largest),
  so no statement is left to cut: PostgreSQL alone at 4.8 ms is most of the 6.7 ms a request
  that 150 requests/s per core allows, before any Python.
- Pool exhaustion (first finding above) is fixed at its cause: a plain send gives its connection
  back while the provider answers (rls.connection_release), so the bench now runs on the
  production pool (8 per alias and worker). Two runs, 2,000 metered POSTs each, all 2xx (at this
  pool size 193 of 300 had answered 500): 66.2 and 85.4 req/s, serving CPU 25.44 and 19.54 ms
  (the bare view 3.02 and 2.41 ms in the same runs: the machine's noise, not the path's).

Findings (2026-11-30, third session; BENCH_SERVING_REQUESTS=2000, all three servers in one run,
load average 4):
- Under py-spy --gil the metered POST spent about a tenth of its GIL time starting threads:
  Django's handler gives each request a new one-thread executor and joins it on another new
  thread, and request_started and the close each took a hop of their own. OneHopASGIHandler
  now runs them in the request's one hop, on a thread reused from request to request
  (config/threads.py). Serving CPU per metered message: ours 18.79 ms (server 13.62, PostgreSQL
  4.89, Redis 0.28), Django's handler 27.06 ms, WSGI 18.34 ms; bare view 1.70 / 2.66 / 1.67 ms;
  req/s 88.7 / 58.9 / 79.1.
- The send went from 11 statements to 9 (two data-modifying WITHs: the conversation's update
  with the messages' insert, the reply's update with the conversation's totals) and reads its
  conversation and history with plain SQL: ours 13.39 ms (server 8.82, PostgreSQL 4.33, Redis
  0.23) and 116.8 req/s, Django's handler 15.10 ms and 109.7 req/s, WSGI 13.16 ms and 104.0
  req/s; bare view 1.37 / 2.41 / 1.29 ms. Still 58 req/s per core against the goal's 150.

Findings (2026-11-30, fourth session; load average 4-5 from other work):
- Django sets psycopg's prepare_threshold to None, so nothing was ever prepared, and PostgreSQL
  planned every statement of every send: with EMBEDDED_PG_STAT_STATEMENTS=1, planning was 1.6 ms
  of the metered POST's 4.05 ms in PostgreSQL statements. Prepared per connection
  (config/db/rows.prepared_cursor), planning is under 0.2 ms and the statements take 2.2 ms.
- get_redis_connection() built a new Redis client on every request (Django's cache handler is
  local to each request's context under ASGI); config/cache.redis_client() is one per process.
- After both, ASGI only: 142.6 req/s, 11.49 ms (server 8.25, PostgreSQL 3.05, Redis 0.19). All
  three servers in one run: ours 127.1 req/s and 12.77 ms (server 9.25, PostgreSQL 3.30),
  Django's handler 86.5 req/s and 15.58 ms, WSGI 127.1 req/s and 10.57 ms; bare view 1.62 /
  3.10 / 1.75 ms. Per core-second of the web server alone: 108 / 85 / 127. The goal's 150 is not
  met on either count.

Findings (2026-11-30, fifth session; load average about 4):
- A round trip costs the web server more than an in-process loop says (51 us for an empty query
  there): dropping the pool's two checkout pings saved 0.23 to 0.7 ms of server CPU a metered
  POST in interleaved A/B runs. Round trips per send to PostgreSQL went from 17 to 11: the
  context rides with BEGIN (config/db/rls.py), the pool pings only a connection idle over a
  second and resets on the request's thread (config/db/backend), the locking read brings
  the subscription (billing.selectors.subscription_current_joined), and the finish is one
  statement (analytics.services.usage_record_alongside).
- All three servers in one run: ours 159.7 req/s and 10.03 ms (server 7.13, PostgreSQL 2.71,
  Redis 0.18), Django's handler 154.8 req/s and 10.25 ms, WSGI 120.5 req/s and 11.34 ms; bare
  view 1.15 / 2.02 / 1.16 ms. Per core-second of the web server alone: 140 / 131 / 120; with
  PostgreSQL and Redis, 100 / 98 / 88. The goal's 150 is not met on either count.
- The final code, 50 minutes later, on a slower machine (bare view 1.60 / 3.00 / 1.18 ms): ours
  138.4 req/s and 11.72 ms (server 8.45), Django's handler 119.1 and 13.91, WSGI 104.9 and
  13.06. Side by side with the session's first commit, sequentially, the web server's CPU per
  metered POST was 6.93 against 7.74 ms (docs/performance.md).

Findings (2026-11-30, sixth session):
- A round trip, measured directly (four extra SELECT 1 a send, one server against its twin),
  costs about 0.09 ms of web-server CPU, not the 0.12 to 0.35 ms the fifth session inferred.
  Two more went: the history comes with the locking read (read again when the lock waited for
  another send), and the counters' increment goes with the reservation's settlement in one Redis
  pipeline: 10 to PostgreSQL and 4 to Redis a send. Side by side with the fifth session's last
  commit (config/tests/bench_side_by_side.py), no CPU difference beyond the noise.
- The machine's own speed dominates: the same code served 154 metered POSTs per web-server
  core-second at 14:16 UTC (ours 170.2 req/s, 9.22 ms: server 6.47, PostgreSQL 2.58, Redis 0.17)
  and 124 at 14:29 (139.2 req/s, 11.27 ms: server 8.05); ours-only runs ranged from 117 to 169
  within the hour.

Findings (2026-11-30, seventh session):
- Three indexes the send's writes kept up for nothing went (chat 0012, analytics 0009):
  pg_stat_statements put the prepare's write at 0.31 ms (0.37 before) and the finish at 0.69
  to 0.78 ms (0.81).
- The message body is validated and the reply rendered without DRF's per-field steps, with
  DRF's exact results (config/api/inputs.py, config/api/outputs.py): side by side with the
  commit before, 4.94 / 5.05 against 5.37 / 5.41 ms of web-server CPU a request.
- All three servers at 16:03 UTC, a quiet hour (the bare view 0.97 ms): ours 211.3 req/s,
  p50 119.1 ms, 7.56 ms serving CPU = server 5.18 + PostgreSQL 2.23 + Redis 0.14: 193 metered
  POSTs per web-server core-second, 132 with PostgreSQL and Redis counted. Django's handler
  165.6 req/s (9.90 ms), WSGI 190.5 req/s (6.92 ms: server 5.01 + PostgreSQL 1.73 + Redis 0.19).

Findings (2026-11-30, eighth session):
- The pool's check-in RESET ALL goes with each COMMIT (config/db/backend) and the context with
  BEGIN is SET LOCAL, which PostgreSQL does not plan: 8 PostgreSQL round trips a send. Side by
  side with the seventh session's last commit: web-server CPU 4.15 / 4.19 against 4.49 / 4.42 ms
  a request, PostgreSQL 1.66 / 1.70 against 1.84 / 2.00 ms.
- All three servers at 17:49 UTC, the quietest hour seen (the bare view 0.88 ms): ours 216.0
  req/s, p50 124.2 ms (+82.7 over the bare view), 6.74 ms serving CPU = server 4.53 +
  PostgreSQL 2.07 + Redis 0.13: 221 metered POSTs per web-server core-second, 148 with
  PostgreSQL and Redis counted. Six minutes earlier: 186.0 req/s, 8.33 ms, 171 and 120. A
  middling hour with the final code (18:22): 183.1 req/s, 8.28 ms, 176 and 121; at one client
  (18:24), p50 +7.8 ms over the bare view (+9.3 in the seventh session).

Findings (2026-11-30, ninth session):
- At one client the fixed 10 conversations a client took about 230 sends each, so the one-client
  p50 measured 460-message histories: the +7.8 and +9.3 ms above. With about 10 sends a
  conversation at any client count (SENDS_PER_CONVERSATION), six one-client runs within 25
  minutes gave +4.5 to +10.2 ms (5.53 to 9.48 ms of serving CPU; the bare view 0.84 to 1.53).
- In a closed loop of 32 clients p50 is queueing: p50 added is about 32 x (1/X_metered -
  1/X_bare), so 5 ms needs the metered path within 7% of the bare view's throughput (see
  docs/performance.md). BENCH_SERVING_RATE measures at a load both sustain: at 100 requests/s
  over 32 connections (19:10, all three servers) ours added 6.4 ms (10.72 against 4.27),
  Django's handler 15.6, WSGI 11.7.
- Django parses timestamptz with psycopg's pure-Python loader; config/db/backend's FastTzLoader
  uses psycopg's C one (3.6 against 0.2 us a value).
- The finish (one statement, a transaction of its own) goes with its BEGIN, context, COMMIT and
  reset in one round trip through libpq's pipeline mode (DatabaseWrapper.run_alone): 6
  PostgreSQL round trips a send. In-process 29 against 96 us of CPU a transaction; side by
  side, no difference beyond the noise (docs/performance.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest
from django.conf import settings

from accounts.services import api_key_create
from accounts.tests.factories import make_user
from billing.models import Plan
from billing.tests.factories import make_plans, organization_of, put_on_plan
from chat.services import conversation_create
from chat.tests.factories import make_catalog
from config.db import rls
from config.tests import benchkit as bk
from config.tests.serving import LOAD_SCRIPT, served

WORKERS = int(os.environ.get("BENCH_SERVING_WORKERS", 2))
CONCURRENCY = int(os.environ.get("BENCH_SERVING_CONCURRENCY", 32))
REQUESTS = int(os.environ.get("BENCH_SERVING_REQUESTS", 3000))
WARMUP = int(os.environ.get("BENCH_SERVING_WARMUP", 300))
# Requests/s for an open load (serving_load.py --rate): each request due at its time whether or not
# earlier ones were answered. 0, the default, is the closed loop the issue describes.
RATE = float(os.environ.get("BENCH_SERVING_RATE", 0))
CHAT_BODY = json.dumps({"content": "Hello, how are you?"})
# Fresh conversations enough for at most about this many sends each (warm-up included), 10 a
# client at least, so a history is about 20 messages at any client count (as the runs at 32
# clients since the first have had it): one client with a fixed 10 conversations gave each
# about 230 sends, and its p50 measured reading 460-message histories, not the metered path.
SENDS_PER_CONVERSATION = 10
# The pool as production sizes it (DATABASE_POOL_MAX_SIZE 8 per alias and worker): a send holds a
# connection only for its two short transactions (rls.connection_release while the provider answers).
SERVER_ENV = {"THROTTLE_API_PER_MINUTE": "100000000", "CHAT_ECHO_DELAY": "0"}


@dataclass(frozen=True)
class Target:
    name: str
    method: str
    path: str
    body: str = ""
    api_key: bool = False
    per_conversation: bool = False  # one URL per conversation: the path has {conversation_id}


@dataclass(frozen=True)
class Server:
    wsgi: bool = False
    app: str | None = None  # an ASGI application other than config.asgi's


# What production serves; Django's stock ASGI handler, which ours replaced (its middleware chain in
# async mode); and the sync WSGI workers ASGI replaced (the cost of ASGI for sync views).
SERVERS = {
    "ASGI uvicorn": Server(),
    "ASGI, Django's handler (before)": Server(app="config.tests.stock_asgi:application"),
    "WSGI sync (before)": Server(wsgi=True),
}
BARE = "bare view, chat reply JSON"
METERED = "POST message (metered, echo)"
TARGETS = [
    Target("bare view, chat reply JSON", "POST", "/_serving/chat-reply", CHAT_BODY),
    Target("GET /health/live", "GET", "/health/live"),
    Target("GET /api/v1/usage/summary (API key)", "GET", "/api/v1/usage/summary", api_key=True),
    Target(METERED, "POST", "/api/v1/conversations/{conversation_id}/messages", CHAT_BODY, api_key=True, per_conversation=True),
]


def _urls(base: str, target: Target, user) -> list[str]:
    """The target's URLs with its placeholders filled; fresh conversations when it needs them."""
    fields = {"user_id": user.pk, "organization_id": organization_of(user).pk}
    if not target.per_conversation:
        return [base + target.path.format(**fields)]
    per_client = max(10, math.ceil((REQUESTS + WARMUP) / (CONCURRENCY * SENDS_PER_CONVERSATION)))
    conversations = [conversation_create(user=user) for _ in range(per_client * CONCURRENCY)]
    return [base + target.path.format(**fields, conversation_id=c.pk) for c in conversations]


# Where the metered POST's GIL time goes, when profiled: the request's thread, the send and its
# two transactions, and DRF's authentication and throttle.
PROFILED_FRAMES = ["SyncToAsync.thread_handler", "message_send", "message_prepare", "_reply_finish", "APIView.initial"]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _targets() -> list[Target]:
    extra = os.environ.get("BENCH_SERVING_TARGET")
    if not extra:
        return TARGETS
    method, path = extra.split(" ", 1)
    body = os.environ.get("BENCH_SERVING_BODY", "")
    return [*TARGETS, Target(extra, method, path, body, api_key=True, per_conversation="{conversation_id}" in path)]


def _servers() -> dict[str, Server]:
    chosen = os.environ.get("BENCH_SERVING_SERVERS")
    return {name: server for name, server in SERVERS.items() if not chosen or name in chosen.split(",")}


def _metered_user():
    """A user whose organization's plan refuses none of the bench's messages (Enterprise, no rate limit)."""
    make_catalog()  # a transactional test's flush removed the seeded catalog and plans
    plans = make_plans()
    with rls.privileged(reason="bench: an unlimited plan"):
        Plan.objects.filter(pk=plans["enterprise"].pk).update(requests_per_minute=None, monthly_tokens=None, monthly_messages=None)
    user = make_user()
    put_on_plan(organization_of(user), plans["enterprise"])
    return user


def _statements_say(server: str, statements: list[tuple]) -> None:
    bk.say(f"   {server}, metered POST, PostgreSQL's time per request by statement (pg_stat_statements):")
    for calls, plans, plan_ms, exec_ms, query in statements:
        bk.say(
            f"     {plan_ms + exec_ms:6.3f} ms (plan {plan_ms:.3f}, execute {exec_ms:.3f}; {calls} calls, planned {plans}x)  {query[:110]}"
        )
    bk.say(f"     {sum(s[2] + s[3] for s in statements):6.3f} ms in all")


def _load(urls: list[str], target: Target, secret: str) -> dict:
    command = [sys.executable, str(LOAD_SCRIPT), *urls, "--method", target.method, "--body", target.body]
    command += ["--concurrency", str(CONCURRENCY), "--requests", str(REQUESTS), "--warmup", str(WARMUP), "--rate", str(RATE)]
    if target.api_key:
        command += ["--header", f"Authorization: Bearer {secret}"]
    out = subprocess.run(command, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_serving_throughput_and_latency():
    user = _metered_user()
    with rls.privileged(reason="bench: issue an API key"):
        _key, secret = api_key_create(user=user, name="bench", scopes=["usage:read", "chat:read", "chat:write"])
    rows, figures, cores = [], {}, os.cpu_count()
    for server, how in _servers().items():
        gc_dir = tempfile.mkdtemp(prefix="confab-gc-")  # each worker's collector time (config/collector.py)
        with served(workers=WORKERS, wsgi=how.wsgi, app=how.app, GC_STATS_DIR=gc_dir, **SERVER_ENV) as base:
            for target in _targets():
                urls = _urls(base, target, user)
                profile_dir = os.environ.get("BENCH_SERVING_PROFILE_DIR") if target.name == METERED else None
                with bk.profiled(base.pid, profile_dir, _slug(server)) as profiles, bk.statements_tracked(REQUESTS + WARMUP) as statements:
                    cpu_before, gc_before = bk.serving_cpu_seconds(base.pid), bk.collector_seconds(gc_dir)
                    result = _load(urls, target, secret)
                    cpu_after, gc_after = bk.serving_cpu_seconds(base.pid), bk.collector_seconds(gc_dir)
                if profiles:
                    shares = bk.profile_shares(profiles, PROFILED_FRAMES)
                    bk.say(f"   {server}, metered POST, share of GIL samples: " + ", ".join(f"{f} {v:.0%}" for f, v in shares.items()))
                if statements and target.name == METERED:
                    _statements_say(server, statements)
                collector_share = (gc_after[0] - gc_before[0]) / max(gc_after[1] - gc_before[1], 1e-9)
                # Warm-up requests included: the load process sends them in the same run.
                cpu_parts = {part: (cpu_after[part] - cpu_before[part]) * 1000 / (REQUESTS + WARMUP) for part in cpu_after}
                cpu_ms = sum(cpu_parts.values())
                latency = bk.summary(result["latencies_ms"])
                ok = sum(n for status, n in result["statuses"].items() if status.startswith("2"))
                rps = len(result["latencies_ms"]) / result["elapsed_s"]
                rows.append([server, target.name, ok, rps, latency["p50"], latency["p95"], latency["p99"], cpu_ms, 1000 / cpu_ms])
                figures[f"{server}: {target.name}"] = {
                    "requests_per_s": rps,
                    "statuses": result["statuses"],
                    "latency_ms": latency,
                    "serving_cpu_ms_per_request": cpu_ms,
                    "serving_cpu_ms_per_request_by_part": cpu_parts,
                    "requests_per_serving_core_s": 1000 / cpu_ms,
                    "garbage_collector_share_of_workers_cpu": collector_share,
                }
                assert ok == REQUESTS, f"{server}, {target.name}: {result['statuses']}"
    bk.say(
        bk.table(
            f"Serving: gunicorn, {WORKERS} workers, {CONCURRENCY} concurrent clients, {REQUESTS} requests per target"
            + (f", open load at {RATE:g} requests/s" if RATE else ""),
            ["server", "target", "2xx", "req/s", "p50 ms", "p95 ms", "p99 ms", "cpu ms/req", "req/core-s"],
            rows,
        )
    )
    for server in _servers():
        bare, metered = figures[f"{server}: {BARE}"], figures[f"{server}: {METERED}"]
        added = metered["latency_ms"]["p50"] - bare["latency_ms"]["p50"]
        per_core = metered["requests_per_s"] / cores
        figures[f"{server}: metered over bare"] = {"p50_added_ms": added, "requests_per_s_per_core": per_core}
        bk.say(f"   {server}: metered message p50 {added:+.1f} ms over the bare view; {per_core:.0f} req/s per core ({cores} cores)")
        bk.say(
            f"   {server}: serving CPU per metered message {metered['serving_cpu_ms_per_request']:.2f} ms "
            f"(bare view {bare['serving_cpu_ms_per_request']:.2f} ms): {metered['requests_per_serving_core_s']:.0f} requests "
            "per core-second of the server, PostgreSQL and Redis together; by part: "
            + ", ".join(f"{part} {ms:.2f} ms" for part, ms in metered["serving_cpu_ms_per_request_by_part"].items())
        )
        server_ms = metered["serving_cpu_ms_per_request_by_part"]["server"]
        figures[f"{server}: metered over bare"]["requests_per_web_server_core_s"] = 1000 / server_ms
        bk.say(
            f"   {server}: {1000 / server_ms:.0f} metered requests per core-second of the web server alone (PostgreSQL and Redis not counted)"
        )
        bk.say(f"   {server}: Python's garbage collector took {metered['garbage_collector_share_of_workers_cpu']:.1%} of the workers' CPU")
    bk.say("   goal (issue #10): >= 150 req/s per core with full metering, <= 5 ms p50 added over the bare view")
    bk.say(f"   machine: {bk.machine()}")
    bk.report_write("serving", {"workers": WORKERS, "concurrency": CONCURRENCY, "requests": REQUESTS, "rate": RATE, "targets": figures})
