"""API logs and the log buffer: requests queue rows in Redis, the flush writes each once,
a dead flush or a missing worker loses nothing, bad rows step aside; the app role only reads its own."""

import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from celery.signals import task_postrun
from django.db import connections
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from accounts import services as account_services
from analytics import buffer, services
from analytics.models import ApiLog, AuditLog, Event
from analytics.tasks import logs_flush_task
from analytics.tests.factories import make_member
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(table, where="TRUE", params=()):
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE {where}", params)
        return cur.fetchone()[0]


def _buffered(kind):
    return [json.loads(raw) for raw in get_redis_connection("default").lrange(buffer.buffer_key(kind), 0, -1)]


def _api_log_row(**overrides):
    row = {
        "request_uuid": str(uuid.uuid4()),
        "created_at": timezone.now().isoformat(),
        "user_id": None,
        "api_key_id": None,
        "route": "api/v1/me",
        "method": "GET",
        "status": 200,
        "duration_ms": 3,
        "ip": "127.0.0.1",
        "user_agent": "pytest",
        "error": "",
    }
    row.update(overrides)
    return row


def _key_client(user, scopes=("account:read",)):
    with rls.privileged(reason="test"):
        key, secret = account_services.api_key_create(user=user, name="test key", scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client, key


def test_api_requests_are_buffered_with_the_route_pattern_status_user_and_key():
    user, org = make_member()
    client, key = _key_client(user)
    assert client.get("/api/v1/me", HTTP_USER_AGENT="agent/1.0").status_code == 200
    assert client.get(f"/api/v1/organizations/{org}").status_code == 200
    assert client.get(f"/api/v1/organizations/{uuid.uuid4()}").status_code == 404
    assert APIClient().get("/api/v1/me").status_code == 401
    session = APIClient()
    session.force_login(user)
    assert session.get("/api/v1/preferences").status_code == 200
    assert APIClient().get("/api/v1/no-such-thing").status_code == 404

    assert _rows("analytics_apilog") == 0  # nothing written on the request path
    logged = _buffered("api_log")
    assert [(r["method"], r["route"], r["status"]) for r in logged] == [
        ("GET", "api/v1/me", 200),
        ("GET", "api/v1/organizations/<uuid:organization_id>", 200),
        ("GET", "api/v1/organizations/<uuid:organization_id>", 404),
        ("GET", "api/v1/me", 401),
        ("GET", "api/v1/preferences", 200),
        ("GET", "(unmatched)", 404),
    ]
    assert [r["user_id"] for r in logged] == [str(user.pk)] * 3 + [None, str(user.pk), None]
    assert [r["api_key_id"] for r in logged] == [str(key.pk)] * 3 + [None] * 3
    assert logged[0]["user_agent"] == "agent/1.0" and logged[0]["ip"] == "127.0.0.1" and logged[0]["error"] == ""
    assert logged[2]["error"] and logged[3]["error"].startswith("Authentication credentials")
    assert logged[5]["error"] == "No API endpoint at /api/v1/no-such-thing."
    assert all(r["duration_ms"] >= 0 for r in logged)

    assert buffer.buffer_flush("api_log") == 6
    stored = ApiLog.objects.using("privileged").order_by("created_at")
    assert [(s.route, s.status, s.user_id, s.api_key_id) for s in stored] == [
        (
            r["route"],
            r["status"],
            uuid.UUID(r["user_id"]) if r["user_id"] else None,
            uuid.UUID(r["api_key_id"]) if r["api_key_id"] else None,
        )
        for r in logged
    ]
    assert buffer.buffer_length("api_log") == 0


def test_flushing_twice_or_repushing_the_same_rows_writes_each_once():
    rows = [_api_log_row() for _ in range(5)]
    for row in rows:
        buffer.buffer_push("api_log", row)
    assert buffer.buffer_flush("api_log") == 5
    assert buffer.buffer_flush("api_log") == 0
    for row in rows:  # the same entries again (e.g. a producer retried)
        buffer.buffer_push("api_log", row)
    assert buffer.buffer_flush("api_log") == 0
    assert _rows("analytics_apilog") == 5
    assert buffer.buffer_length("api_log") == 0


def test_a_flush_killed_between_insert_and_trim_loses_and_doubles_nothing(monkeypatch):
    for _ in range(7):
        buffer.buffer_push("api_log", _api_log_row())

    def die(*args, **kwargs):
        raise SystemExit("worker killed")

    with monkeypatch.context() as patch:
        patch.setattr(buffer, "_trim", die)
        with pytest.raises(SystemExit):
            buffer.buffer_flush("api_log")
    assert _rows("analytics_apilog") == 7  # inserted and committed...
    assert buffer.buffer_length("api_log") == 7  # ...but still queued
    assert buffer.buffer_flush("api_log") == 0
    assert _rows("analytics_apilog") == 7
    assert buffer.buffer_length("api_log") == 0


def test_entries_accumulate_while_no_worker_runs_and_all_land_after_the_flush():
    user, org = make_member()
    client, _ = _key_client(user)
    for _ in range(3):
        client.get("/api/v1/me")
    for _ in range(2497):
        buffer.buffer_push("api_log", _api_log_row())
    for n in range(40):
        services.event_track(name=f"signal.{n}", organization_id=org)
    assert buffer.buffer_length("api_log") == 2500 and buffer.buffer_length("event") == 40
    assert _rows("analytics_apilog") == 0 and _rows("analytics_event") == 0
    report = buffer.buffer_flush_all(batch_size=1000)
    assert report["api_log"] == 2500 and report["event"] == 40
    assert _rows("analytics_apilog") == 2500 and _rows("analytics_event") == 40
    assert _rows("analytics_apilog", "route = 'api/v1/me' AND user_id = %s", [user.pk]) == 3
    assert all(buffer.buffer_length(kind) == 0 for kind in buffer.KINDS)


def test_unparseable_rows_go_to_the_dead_letter_list_without_blocking_the_others(caplog):
    redis = get_redis_connection("default")
    good = [_api_log_row() for _ in range(3)]
    buffer.buffer_push("api_log", good[0])
    redis.rpush(
        buffer.buffer_key("api_log"),
        b"{not json",
        b"[1, 2]",
        json.dumps(_api_log_row(request_uuid="nope")),
        json.dumps(_api_log_row(status="teapot")),
        json.dumps(_api_log_row(created_at="2026-01-01T00:00:00")),
    )  # no time zone
    buffer.buffer_push("api_log", good[1])
    buffer.buffer_push("api_log", good[2])
    assert buffer.buffer_flush("api_log") == 3
    assert buffer.buffer_length("api_log") == 0
    dead = redis.lrange(buffer.dead_key("api_log"), 0, -1)
    assert len(dead) == 5 and dead[0] == b"{not json"
    assert "unparseable api_log row" in caplog.text
    assert _rows("analytics_apilog") == 3


def test_a_row_the_database_refuses_steps_aside_and_the_rest_of_its_batch_lands():
    for n in range(4):
        properties = {"text": "nul \u0000 here"} if n == 2 else {"n": n}  # jsonb refuses \u0000
        buffer.buffer_push(
            "event",
            {
                "event_uuid": str(uuid.uuid4()),
                "created_at": timezone.now().isoformat(),
                "name": f"e{n}",
                "properties": properties,
                "source": "server",
            },
        )
    assert buffer.buffer_flush("event") == 3
    assert sorted(Event.objects.using("privileged").values_list("name", flat=True)) == ["e0", "e1", "e3"]
    assert len(get_redis_connection("default").lrange(buffer.dead_key("event"), 0, -1)) == 1
    assert buffer.buffer_length("event") == 0


def test_rows_keep_their_own_created_at_to_the_microsecond():
    at = datetime(2026, 2, 14, 9, 30, 15, 123456, tzinfo=UTC)
    buffer.buffer_push("api_log", _api_log_row(created_at=at))
    assert buffer.buffer_flush("api_log") == 1
    assert ApiLog.objects.using("privileged").get().created_at == at


def _close_connections(**kwargs):
    connections.close_all()


@pytest.fixture
def worker_closes_connections():
    """The in-thread worker closes its own database connections after each task (the test
    database is dropped at the end of the session, with no session left on it)."""
    task_postrun.connect(_close_connections, weak=False)
    yield
    task_postrun.disconnect(_close_connections)


def test_a_real_celery_worker_flushes_every_buffer(worker_closes_connections, celery_worker):
    user, org = make_member()
    for _ in range(3):
        buffer.buffer_push("api_log", _api_log_row(user_id=str(user.pk)))
    with rls.privileged(reason="test: read preferences"):
        services.event_track(name="worker.test", user=user, organization_id=org)
    result = logs_flush_task.delay().get(timeout=30)
    assert result["api_log"] == 3 and result["event"] == 1
    assert result["audit"] >= 1  # the factory's and the test's privileged access, the user's creation
    assert _rows("analytics_apilog") == 3 and _rows("analytics_event") == 1
    assert AuditLog.objects.using("privileged").filter(action="privileged_access", detail__reason="test: read preferences").exists()
    assert not AuditLog.objects.using("privileged").filter(detail__reason__startswith="analytics buffer").exists()


def test_the_app_role_reads_only_its_own_log_rows_and_cannot_insert_any(raw_app_connection):
    alice, alice_org = make_member()
    bob, bob_org = make_member()
    for user, org in ((alice, alice_org), (bob, bob_org)):
        buffer.buffer_push("api_log", _api_log_row(user_id=str(user.pk)))
        with rls.privileged(reason="test: track"):
            services.event_track(name="seen", user=user, organization_id=org)
        buffer.buffer_push(
            "audit",
            {
                "entry_uuid": str(uuid.uuid4()),
                "created_at": timezone.now().isoformat(),
                "user_id": str(user.pk),
                "action": "update",
                "table_name": "accounts_user",
                "record_id": str(user.pk),
                "detail": {},
            },
        )
    buffer.buffer_flush_all()
    assert _rows("analytics_auditlog", "user_id IS NULL") > 0  # system entries alice must not see either
    with raw_app_connection.cursor() as cur:
        cur.execute(
            "SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(alice.pk), str(alice_org)]
        )
        for table in ("analytics_apilog", "analytics_event", "analytics_auditlog"):
            cur.execute(f"SELECT DISTINCT user_id FROM {table}")
            assert cur.fetchall() == [(alice.pk,)], table
    raw_app_connection.rollback()
    inserts = {
        "analytics_apilog": "INSERT INTO analytics_apilog (request_uuid, user_id, route, method, status, duration_ms) "
        "VALUES (gen_random_uuid(), %s, 'x', 'GET', 200, 1)",
        "analytics_event": "INSERT INTO analytics_event (event_uuid, user_id, name) VALUES (gen_random_uuid(), %s, 'x')",
        "analytics_auditlog": "INSERT INTO analytics_auditlog (entry_uuid, user_id, action) VALUES (gen_random_uuid(), %s, 'x')",
    }
    for table, statement in inserts.items():
        with raw_app_connection.cursor() as cur:
            cur.execute("SELECT set_config('app.user_id', %s, true)", [str(alice.pk)])
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute(statement, [alice.pk])
        raw_app_connection.rollback()
