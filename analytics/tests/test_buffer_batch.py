"""API log rows go to Redis a process's batch at a time (analytics/buffer.buffer_push_soon):
one RPUSH for the rows of an interval, written through to PostgreSQL when Redis is down,
sent by a process that exits (a served worker's too), and never sent twice across a fork."""

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.tests.factories import make_user
from analytics import buffer
from config import embedded
from config.cache import redis_client
from config.db import rls
from config.tests.serving import served, server_env

pytestmark = pytest.mark.django_db(transaction=True)


def _row(**overrides):
    return {
        "request_uuid": str(uuid.uuid4()),
        "created_at": timezone.now().isoformat(),
        "route": "api/v1/me",
        "method": "GET",
        "status": 200,
        "duration_ms": 3,
        **overrides,
    }


def _queued_uuids() -> list[str]:
    return [json.loads(raw)["request_uuid"] for raw in redis_client().lrange(buffer.buffer_key("api_log"), 0, -1)]


def _until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


def _rpush_calls() -> int:
    return redis_client().info("commandstats").get("cmdstat_rpush", {}).get("calls", 0)


def _key_client(user):
    with rls.privileged(reason="test"):
        _, secret = account_services.api_key_create(user=user, name="batch", scopes=["account:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_api_requests_rows_arrive_together_after_the_interval(own_redis, settings):
    settings.API_LOG_BATCH_SECONDS = 2.0
    client = _key_client(make_user())
    pushes = _rpush_calls()
    for _ in range(5):
        assert client.get("/api/v1/me").status_code == 200
    assert _queued_uuids() == []  # queued in the process, not yet sent
    _until(lambda: len(_queued_uuids()) == 5)
    assert _rpush_calls() - pushes == 1


def test_with_no_interval_each_row_is_pushed_as_it_comes(own_redis, settings):
    settings.API_LOG_BATCH_SECONDS = 0
    row = _row()
    buffer.buffer_push_soon("api_log", row)
    assert _queued_uuids() == [row["request_uuid"]]


def test_redis_down_when_the_batch_goes_writes_it_through_to_postgresql(own_redis, settings, caplog):
    settings.API_LOG_BATCH_SECONDS = 0.5
    rows = [_row(), _row(status="teapot"), _row()]  # the middle one can never be inserted
    for row in rows:
        buffer.buffer_push_soon("api_log", row)
    embedded.redis_stop(own_redis)

    def written():
        with connections["owner"].cursor() as cur:
            cur.execute("SELECT count(*) FROM analytics_apilog WHERE request_uuid = ANY(%s)", [[r["request_uuid"] for r in rows]])
            return cur.fetchone()[0]

    _until(lambda: written() == 2)
    assert "row lost (Redis unreachable, unparseable)" in caplog.text


def test_a_process_that_exits_sends_the_rows_it_queued():
    rows = [_row() for _ in range(3)]
    script = (
        "import django, json, sys; django.setup()\n"
        "from analytics.buffer import buffer_push_soon\n"
        "for row in json.loads(sys.argv[1]): buffer_push_soon('api_log', row)\n"
    )
    env = server_env(API_LOG_BATCH_SECONDS="600")  # only the exit can send them
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(rows)], cwd=django_settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert _queued_uuids()[-3:] == [row["request_uuid"] for row in rows]


def test_a_served_worker_stopped_by_gunicorn_sends_its_rows_first():
    with rls.privileged(reason="test"):
        _, secret = account_services.api_key_create(user=make_user(), name="batch", scopes=["account:read"])
    before = len(_queued_uuids())
    with served(workers=1, API_LOG_BATCH_SECONDS="600") as base:
        for _ in range(4):
            assert httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code == 200
        assert len(_queued_uuids()) == before
    assert len(_queued_uuids()) == before + 4


def test_a_forked_child_sends_its_own_rows_and_not_its_parents(settings):
    settings.API_LOG_BATCH_SECONDS = 600
    parent_row, child_row = _row(), _row()
    buffer.buffer_push_soon("api_log", parent_row)
    pid = os.fork()
    if pid == 0:
        try:
            buffer.buffer_push_soon("api_log", child_row)
            buffer._batch.send()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert _queued_uuids() == [child_row["request_uuid"]]
    assert buffer._batch.send() == 1
    assert _queued_uuids() == [child_row["request_uuid"], parent_row["request_uuid"]]
