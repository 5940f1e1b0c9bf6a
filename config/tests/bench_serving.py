"""Benchmark (issue #10): requests/s and latency under the ASGI server, as production serves.

gunicorn with 2 uvicorn workers on loopback against the bench database (the pool on,
DEBUG off), then 2 sync WSGI workers as the baseline ASGI replaces, each driven by a
separate load process (config/tests/serving_load.py: asyncio + httpx) with 32 concurrent
keep-alive clients sending a fixed number of requests per target, after a warm-up.
Targets: a bare Django view answering a chat reply's JSON (the framework's floor: every
middleware, no auth, no queries), the same view marked as the metered send's view is (the RLS
middleware opens no transaction for it, so checks out no connection: the send's own floor),
/health/live, an API-key `GET /api/v1/usage/summary`
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
BENCH_SERVING_PROFILE_TARGET names another target to profile instead (as the table names it, e.g.
"GET /api/v1/conversations/{conversation_id}" with that BENCH_SERVING_TARGET).
BENCH_SERVING_ROUNDS=5 splits each target's requests into that many rounds, every target once a
round (the first round warms up, the others open their connections with a few requests first),
and prints each round's p50: how far this shared machine moves within a run. Latencies, CPU and
statements are those of all rounds together. One round, the default, runs each target's
requests at once, the metered POST last (docs/performance.md, "Measuring on this machine", for
what the rounds found).
BENCH_SERVING_CPU_TRACE=1 serves "ASGI uvicorn" with config/tests/cpu_trace.py's wrappers on the
metered send's functions and prints, for the metered POST, each one's thread CPU a request
(inclusive; waits on PostgreSQL and Redis cost nothing, unlike in py-spy's samples); the wrappers
add about a microsecond a call, so that run's figures are a little higher than others.
BENCH_SERVING_CPU_TRACE_TARGET="bare view, chat reply JSON" traces another target instead;
BENCH_SERVING_CPU_TRACE_FUNCTIONS="module:Class.method,..." traces more functions (config/tests/traced_asgi.py).
EMBEDDED_PG_STAT_STATEMENTS=1 starts the throwaway PostgreSQL with pg_stat_statements and prints,
for the metered POST, PostgreSQL's planning and execution time per request by statement.
The per-key API throttle stays on but high enough never to answer 429.

What the runs found, session by session: docs/performance.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

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
from config.tests import cpu_trace
from config.tests.serving import LOAD_SCRIPT, served

WORKERS = int(os.environ.get("BENCH_SERVING_WORKERS", 2))
CONCURRENCY = int(os.environ.get("BENCH_SERVING_CONCURRENCY", 32))
REQUESTS = int(os.environ.get("BENCH_SERVING_REQUESTS", 3000))
WARMUP = int(os.environ.get("BENCH_SERVING_WARMUP", 300))
ROUNDS = int(os.environ.get("BENCH_SERVING_ROUNDS", 1))
# A later round's load process opens its keep-alive connections with these first (not counted).
ROUND_WARMUP = max(20, 2 * CONCURRENCY)
# Requests/s for an open load (serving_load.py --rate): each request due at its time whether or not
# earlier ones were answered. 0, the default, is the closed loop the issue describes.
RATE = float(os.environ.get("BENCH_SERVING_RATE", 0))
CPU_TRACE = os.environ.get("BENCH_SERVING_CPU_TRACE") == "1"
TRACE_ROWS = 40
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
# The same view marked as the metered send's view is (rls.own_transactions): the RLS middleware then
# opens no transaction and checks out no connection for it, as for the send. The plain bare view's
# floor includes that checkout (about 0.4 ms of CPU), which the send's path does not pay.
BARE_OWN = "bare view, no middleware transaction"
METERED = "POST message (metered, echo)"
TARGETS = [
    Target(BARE, "POST", "/_serving/chat-reply", CHAT_BODY),
    Target(BARE_OWN, "POST", "/_serving/chat-reply-own-transactions", CHAT_BODY),
    Target("GET /health/live", "GET", "/health/live"),
    Target("GET /api/v1/usage/summary (API key)", "GET", "/api/v1/usage/summary", api_key=True),
    Target(METERED, "POST", "/api/v1/conversations/{conversation_id}/messages", CHAT_BODY, api_key=True, per_conversation=True),
]


def _urls(base: str, target: Target, user, sends: int) -> list[str]:
    """The target's URLs with its placeholders filled; fresh conversations for `sends` when it needs them."""
    fields = {"user_id": user.pk, "organization_id": organization_of(user).pk}
    if not target.per_conversation:
        return [base + target.path.format(**fields)]
    per_client = max(10, math.ceil(sends / (CONCURRENCY * SENDS_PER_CONVERSATION)))
    conversations = [conversation_create(user=user) for _ in range(per_client * CONCURRENCY)]
    return [base + target.path.format(**fields, conversation_id=c.pk) for c in conversations]


def _rounds() -> list[tuple[int, int]]:
    """(requests, warm-up requests) of each round: REQUESTS split evenly, the first round warming up."""
    if not 1 <= ROUNDS <= REQUESTS:
        raise ValueError(f"BENCH_SERVING_ROUNDS must be from 1 to BENCH_SERVING_REQUESTS ({REQUESTS}); got {ROUNDS}.")
    return [(REQUESTS // ROUNDS + (n < REQUESTS % ROUNDS), WARMUP if n == 0 else ROUND_WARMUP) for n in range(ROUNDS)]


@dataclass
class _Rounds:
    """One target's figures over the rounds, summed."""

    latencies: list = field(default_factory=list)
    statuses: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    sent: int = 0  # warm-up requests included: the CPU measured covers them
    cpu_s: dict = field(default_factory=dict)
    collector_s: float = 0.0
    process_s: float = 0.0
    profiles: list = field(default_factory=list)
    p50_by_round: list = field(default_factory=list)  # how far the machine moved between rounds
    statements: dict = field(default_factory=dict)  # queryid: [calls, plans, planning ms, execution ms, statement], totals

    def add(self, result: dict, sent: int, cpu: tuple[dict, dict], collector: tuple[tuple, tuple], profiles, statements) -> None:
        self.latencies += result["latencies_ms"]
        self.p50_by_round.append(bk.summary(result["latencies_ms"])["p50"])
        for status, n in result["statuses"].items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.elapsed_s += result["elapsed_s"]
        self.sent += sent
        for part, seconds in cpu[1].items():
            self.cpu_s[part] = self.cpu_s.get(part, 0.0) + seconds - cpu[0][part]
        self.collector_s += collector[1][0] - collector[0][0]
        self.process_s += collector[1][1] - collector[0][1]
        self.profiles += profiles
        for calls, plans, plan_ms, exec_ms, query, queryid in statements:  # per request of the round: back to totals
            total = self.statements.setdefault(queryid, [0, 0, 0.0, 0.0, query])
            total[0] += calls
            total[1] += plans
            total[2] += plan_ms * sent
            total[3] += exec_ms * sent

    def statements_per_request(self) -> list[tuple]:
        rows = [(c, p, plan / self.sent, run / self.sent, q) for c, p, plan, run, q in self.statements.values()]
        return sorted(rows, key=lambda row: -(row[2] + row[3]))


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
    servers = {name: server for name, server in SERVERS.items() if not chosen or name in chosen.split(",")}
    if CPU_TRACE and "ASGI uvicorn" in servers:
        servers["ASGI uvicorn"] = Server(app="config.tests.traced_asgi:application")
    return servers


def _cpu_trace_target() -> Target:
    name = os.environ.get("BENCH_SERVING_CPU_TRACE_TARGET", METERED)
    for target in _targets():
        if target.name == name:
            return target
    names = ", ".join(repr(target.name) for target in _targets())
    raise ValueError(f"BENCH_SERVING_CPU_TRACE_TARGET must name one of the targets ({names}); got {name!r}.")


def _cpu_trace_env(directory: str) -> dict[str, str]:
    """What config/tests/traced_asgi.py reads: the traced target's requests are the ones counted."""
    target = _cpu_trace_target()
    cpu_trace.functions_named(os.environ.get("BENCH_SERVING_CPU_TRACE_FUNCTIONS", ""))  # refused here, before any server starts
    path = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(target.path.split("?")[0]))
    return {"CPU_TRACE_DIR": directory, "CPU_TRACE_METHOD": target.method, "CPU_TRACE_PATH": path}


def _cpu_trace_say(server: str, directory: str) -> dict:
    requests, process_ms, loop_ms, rows = cpu_trace.read(directory)
    bk.say(f"   {server}, {_cpu_trace_target().name}, thread CPU and wall time a request by function ({requests} requests; inclusive):")
    bk.say(f"      {process_ms:.3f} ms  the workers' CPU a request in all")
    bk.say(f"      {loop_ms:.3f} ms  their event loops' thread (HTTP, the hops to and from the request's thread)")
    bk.say("      CPU ms  wall ms  waiting ms  calls  function")
    for name, ms, calls, wall_ms in rows[:TRACE_ROWS]:
        bk.say(f"      {ms:6.3f}  {wall_ms:7.3f}  {wall_ms - ms:10.3f}  {calls:5.2f}  {name}")
    return {
        "requests": requests,
        "process_ms": process_ms,
        "loop_ms": loop_ms,
        "functions": {name: {"ms": ms, "calls": calls, "wall_ms": wall_ms} for name, ms, calls, wall_ms in rows},
    }


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


def _load(urls: list[str], target: Target, secret: str, requests: int, warmup: int) -> dict:
    command = [sys.executable, str(LOAD_SCRIPT), *urls, "--method", target.method, "--body", target.body]
    command += ["--concurrency", str(CONCURRENCY), "--requests", str(requests), "--warmup", str(warmup), "--rate", str(RATE)]
    if target.api_key:
        command += ["--header", f"Authorization: Bearer {secret}"]
    out = subprocess.run(command, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_serving_throughput_and_latency(tmp_path):
    user = _metered_user()
    with rls.privileged(reason="bench: issue an API key"):
        _key, secret = api_key_create(user=user, name="bench", scopes=["usage:read", "chat:read", "chat:write"])
    rows, figures, cores = [], {}, os.cpu_count()
    for server, how in _servers().items():
        # Each worker's collector time (config/collector.py) and CPU trace; pytest's own directory, removed in time.
        gc_dir, trace_dir = tempfile.mkdtemp(prefix="gc-", dir=tmp_path), tempfile.mkdtemp(prefix="cpu-trace-", dir=tmp_path)
        trace_env = _cpu_trace_env(trace_dir) if how.app == "config.tests.traced_asgi:application" else {}
        with served(workers=WORKERS, wsgi=how.wsgi, app=how.app, GC_STATS_DIR=gc_dir, **trace_env, **SERVER_ENV) as base:
            runs = {target.name: _Rounds() for target in _targets()}
            for round_n, (requests, warmup) in enumerate(_rounds()):
                for target in _targets():
                    urls = _urls(base, target, user, requests + warmup)
                    profile_dir = (
                        os.environ.get("BENCH_SERVING_PROFILE_DIR")
                        if target.name == os.environ.get("BENCH_SERVING_PROFILE_TARGET", METERED)
                        else None
                    )
                    with (
                        bk.profiled(base.pid, profile_dir, f"{_slug(server)}-{round_n}") as profiles,
                        bk.statements_tracked(requests + warmup) as statements,
                    ):
                        cpu_before, gc_before = bk.serving_cpu_seconds(base.pid), bk.collector_seconds(gc_dir)
                        result = _load(urls, target, secret, requests, warmup)
                        cpu_after, gc_after = bk.serving_cpu_seconds(base.pid), bk.collector_seconds(gc_dir)
                    runs[target.name].add(result, requests + warmup, (cpu_before, cpu_after), (gc_before, gc_after), profiles, statements)
        for target in _targets():
            run = runs[target.name]
            if run.profiles:
                shares = bk.profile_shares(run.profiles, PROFILED_FRAMES)
                bk.say(f"   {server}, metered POST, share of GIL samples: " + ", ".join(f"{f} {v:.0%}" for f, v in shares.items()))
            if run.statements and target.name == METERED:
                _statements_say(server, run.statements_per_request())
            if trace_env and target.name == _cpu_trace_target().name:
                figures[f"{server}: cpu trace of {target.name}"] = _cpu_trace_say(server, trace_dir)
            cpu_parts = {part: seconds * 1000 / run.sent for part, seconds in run.cpu_s.items()}
            cpu_ms = sum(cpu_parts.values())
            latency = bk.summary(run.latencies)
            ok = sum(n for status, n in run.statuses.items() if status.startswith("2"))
            rps = len(run.latencies) / run.elapsed_s
            rows.append([server, target.name, ok, rps, latency["p50"], latency["p95"], latency["p99"], cpu_ms, 1000 / cpu_ms])
            figures[f"{server}: {target.name}"] = {
                "requests_per_s": rps,
                "statuses": run.statuses,
                "latency_ms": latency,
                "serving_cpu_ms_per_request": cpu_ms,
                "serving_cpu_ms_per_request_by_part": cpu_parts,
                "requests_per_serving_core_s": 1000 / cpu_ms,
                "garbage_collector_share_of_workers_cpu": run.collector_s / max(run.process_s, 1e-9),
                "p50_ms_by_round": run.p50_by_round,
            }
            assert ok == REQUESTS, f"{server}, {target.name}: {run.statuses}"
            if ROUNDS > 1:
                bk.say(f"   {server}, {target.name}: p50 by round " + ", ".join(f"{p50:.2f}" for p50 in run.p50_by_round) + " ms")
    bk.say(
        bk.table(
            f"Serving: gunicorn, {WORKERS} workers, {CONCURRENCY} concurrent clients, {REQUESTS} requests per target"
            + (f", open load at {RATE:g} requests/s" if RATE else "")
            + (f", side by side in {ROUNDS} rounds" if ROUNDS > 1 else ""),
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
        added_own = metered["latency_ms"]["p50"] - figures[f"{server}: {BARE_OWN}"]["latency_ms"]["p50"]
        figures[f"{server}: metered over bare"]["p50_added_over_bare_without_transaction_ms"] = added_own
        bk.say(f"   {server}: metered message p50 {added_own:+.1f} ms over the bare view without the middleware's transaction")
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
    bk.report_write(
        "serving",
        {"workers": WORKERS, "concurrency": CONCURRENCY, "requests": REQUESTS, "rate": RATE, "rounds": ROUNDS, "targets": figures},
    )
