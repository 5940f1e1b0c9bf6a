"""Benchmark (issue #10): requests/s and latency under the ASGI server, as production serves.

gunicorn with 2 uvicorn workers on loopback against the bench database (the pool on,
DEBUG off), then 2 sync WSGI workers as the baseline ASGI replaces, each driven by a
separate load process (config/tests/serving_load.py: asyncio + httpx) with 32 concurrent
keep-alive clients sending a fixed number of requests per target, after a warm-up.
Targets: a bare Django view answering a chat reply's JSON (the framework's floor: every
middleware, no auth, no queries), /health/live, and an API-key `GET /api/v1/usage/summary`
(authentication, RLS context, throttle, queries). Plug in
another, e.g. the metered message endpoint, with
  BENCH_SERVING_TARGET="POST /api/v1/conversations/{conversation_id}/messages" BENCH_SERVING_BODY='{"content": "Hi"}'
where {user_id}, {organization_id} and whatever _target_fields() adds are filled in.
The per-key API throttle stays on but high enough never to answer 429.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from django.conf import settings

from accounts.models import Membership
from accounts.services import api_key_create
from accounts.tests.factories import make_user
from config.db import rls
from config.tests import benchkit as bk
from config.tests.serving import LOAD_SCRIPT, served

WORKERS, CONCURRENCY = 2, 32
REQUESTS = int(os.environ.get("BENCH_SERVING_REQUESTS", 3000))
WARMUP = int(os.environ.get("BENCH_SERVING_WARMUP", 300))
CHAT_BODY = json.dumps({"content": "Hello, how are you?"})


@dataclass(frozen=True)
class Target:
    name: str
    method: str
    path: str
    body: str = ""
    api_key: bool = False


# What production serves, and the sync WSGI workers it replaces (the cost of ASGI for sync views).
SERVERS = {"ASGI uvicorn": False, "WSGI sync (before)": True}
TARGETS = [
    Target("bare view, chat reply JSON", "POST", "/_serving/chat-reply", CHAT_BODY),
    Target("GET /health/live", "GET", "/health/live"),
    Target("GET /api/v1/usage/summary (API key)", "GET", "/api/v1/usage/summary", api_key=True),
]


def _target_fields(user) -> dict:
    """Values for the placeholders of BENCH_SERVING_TARGET (add a conversation here once chat has one)."""
    organization_id = Membership.objects.using("privileged").filter(user=user).values_list("organization_id", flat=True).first()
    return {"user_id": user.pk, "organization_id": organization_id}


def _targets(user) -> list[Target]:
    extra = os.environ.get("BENCH_SERVING_TARGET")
    if not extra:
        return TARGETS
    method, path = extra.split(" ", 1)
    return [*TARGETS, Target(extra, method, path.format(**_target_fields(user)), os.environ.get("BENCH_SERVING_BODY", ""), api_key=True)]


def _load(base: str, target: Target, secret: str) -> dict:
    command = [sys.executable, str(LOAD_SCRIPT), base + target.path, "--method", target.method, "--body", target.body]
    command += ["--concurrency", str(CONCURRENCY), "--requests", str(REQUESTS), "--warmup", str(WARMUP)]
    if target.api_key:
        command += ["--header", f"Authorization: Bearer {secret}"]
    out = subprocess.run(command, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.bench
@pytest.mark.django_db(transaction=True)
def test_serving_throughput_and_latency():
    user = make_user()
    with rls.privileged(reason="bench: issue an API key"):
        _key, secret = api_key_create(user=user, name="bench", scopes=["usage:read", "chat:read", "chat:write"])
    rows, figures = [], {}
    for server, wsgi in SERVERS.items():
        with served(workers=WORKERS, wsgi=wsgi, THROTTLE_API_PER_MINUTE="100000000") as base:
            for target in _targets(user):
                result = _load(base, target, secret)
                latency = bk.summary(result["latencies_ms"])
                ok = sum(n for status, n in result["statuses"].items() if status.startswith("2"))
                rps = len(result["latencies_ms"]) / result["elapsed_s"]
                rows.append([server, target.name, ok, rps, latency["p50"], latency["p95"], latency["p99"]])
                figures[f"{server}: {target.name}"] = {"requests_per_s": rps, "statuses": result["statuses"], "latency_ms": latency}
                assert ok == REQUESTS, f"{server}, {target.name}: {result['statuses']}"
    bk.say(
        bk.table(
            f"Serving: gunicorn, {WORKERS} workers, {CONCURRENCY} concurrent clients, {REQUESTS} requests per target",
            ["server", "target", "2xx", "req/s", "p50 ms", "p95 ms", "p99 ms"],
            rows,
        )
    )
    bk.say(f"   machine: {bk.machine()}")
    bk.report_write("serving", {"workers": WORKERS, "concurrency": CONCURRENCY, "requests": REQUESTS, "targets": figures})
