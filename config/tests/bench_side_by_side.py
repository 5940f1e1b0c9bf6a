"""Two builds side by side: the web server's CPU and the latency of a metered POST, interleaved.

On this machine a request's CPU moves by a fifth from one hour to the next (docs/performance.md),
so builds measured in runs hours apart cannot be compared. This starts two servers (one worker
each) of each side, A and B, and sends them 100 sequential metered POSTs in turn, round after
round, so all four see the same machine. Compare its figures within one run only; the two
servers of one side show the method's own noise. Latency is each POST's time at the client (one
at a time, so no queueing): its median per side is the one-client p50 of the serving bench.

  BENCH_AB_BASE=/path/to/a/checkout   side B's code, e.g. `git worktree add /tmp/base <commit>`
                                      (same database schema); without it B is this checkout
  BENCH_AB_ENV='NAME=value ...'       extra environment for side B's servers
  BENCH_AB_ROUNDS=20, BENCH_AB_PER=100

  BENCH_AB_BASE=/tmp/base make bench PYTEST_ARGS="config/tests/bench_side_by_side.py"
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import httpx
import pytest
from django.test import override_settings

from accounts.services import api_key_create
from chat.services import conversation_create
from config.db import rls
from config.tests import benchkit as bk
from config.tests.bench_serving import CHAT_BODY, SERVER_ENV, _metered_user
from config.tests.serving import served

ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", 20))
PER = int(os.environ.get("BENCH_AB_PER", 100))
WARMUP_ROUNDS = 2
CONVERSATIONS = 100  # per server: histories stay as short as the serving bench's
PARTS = ("server", "postgresql", "redis")


def _sides() -> list[tuple[str, str | None, dict[str, str]]]:
    base = os.environ.get("BENCH_AB_BASE") or None
    if base and not os.path.isfile(os.path.join(base, "config", "asgi.py")):
        pytest.fail(f"BENCH_AB_BASE must be a checkout of this project; {base!r} has no config/asgi.py.", pytrace=False)
    pairs = os.environ.get("BENCH_AB_ENV", "").split()
    if bad := [pair for pair in pairs if "=" not in pair[1:]]:
        pytest.fail(f"BENCH_AB_ENV takes NAME=value pairs separated by spaces; {' '.join(bad)!r} is not one.", pytrace=False)
    env_b = dict(pair.split("=", 1) for pair in pairs)
    return [("A", None, {}), ("B", base, env_b)] * 2  # A, B, A, B: neither side always starts first


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_two_builds_side_by_side():
    user = _metered_user()
    with rls.privileged(reason="bench: issue an API key"):
        _key, secret = api_key_create(user=user, name="bench side by side", scopes=["chat:read", "chat:write"])
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    with contextlib.ExitStack() as stack:
        servers = []
        for side, checkout, env in _sides():
            with override_settings(BASE_DIR=checkout) if checkout else contextlib.nullcontext():  # served() runs from BASE_DIR
                base = stack.enter_context(served(workers=1, **{**SERVER_ENV, **env}))
            conversations = [conversation_create(user=user).pk for _ in range(CONVERSATIONS)]
            servers.append((side, base, conversations, {part: [] for part in (*PARTS, "latency")}))
        with httpx.Client(timeout=30) as client:
            for round_ in range(WARMUP_ROUNDS + ROUNDS):
                for _side, base, conversations, samples in servers:
                    before = bk.serving_cpu_seconds(base.pid)
                    for n in range(PER):
                        conversation = conversations[(round_ * PER + n) % CONVERSATIONS]
                        sent = time.perf_counter()
                        response = client.post(f"{base}/api/v1/conversations/{conversation}/messages", content=CHAT_BODY, headers=headers)
                        elapsed_ms = (time.perf_counter() - sent) * 1000
                        assert response.status_code == 201, response.text
                        if round_ >= WARMUP_ROUNDS:
                            samples["latency"].append(elapsed_ms)
                    after = bk.serving_cpu_seconds(base.pid)
                    if round_ >= WARMUP_ROUNDS:
                        for part in PARTS:
                            samples[part].append((after[part] - before[part]) * 1000 / PER)
    rows, means, latencies = [], {"A": [], "B": []}, {"A": [], "B": []}
    for n, (side, _base, _conversations, samples) in enumerate(servers):
        server = samples["server"]
        means[side].append(statistics.mean(server))
        latencies[side] += samples["latency"]
        rows.append([f"{side} (server {n + 1})", statistics.mean(server), statistics.median(server)])
        rows[-1] += [statistics.mean(samples["postgresql"]), statistics.mean(samples["redis"]), statistics.median(samples["latency"])]
    bk.say(
        bk.table(
            f"Side by side: {ROUNDS} rounds of {PER} sequential metered POSTs per server; CPU ms per request",
            ["server", "web server mean", "web server median", "PostgreSQL mean", "Redis mean", "latency p50"],
            rows,
        )
    )
    difference = statistics.mean(means["B"]) - statistics.mean(means["A"])
    bk.say(f"   web server, B - A: {difference:+.3f} ms a request (A's two servers differ by {abs(means['A'][0] - means['A'][1]):.3f})")
    latency = statistics.median(latencies["B"]) - statistics.median(latencies["A"])
    bk.say(f"   latency p50, B - A: {latency:+.3f} ms a request")
    bk.report_write(
        "side_by_side", {"rounds": ROUNDS, "per": PER, "rows": rows, "b_minus_a_ms": difference, "latency_b_minus_a_ms": latency}
    )
