"""The foundation: roles, health, a real Celery worker, the OpenAPI schema, the error format."""

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.db import connections
from openapi_spec_validator import validate

from config import embedded
from config.celery import celery_broker_url
from config.tasks import ping


def _role_flags(alias):
    with connections[alias].cursor() as cur:
        cur.execute("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        return cur.fetchone()


@pytest.mark.django_db
def test_web_role_is_neither_superuser_nor_bypassrls():
    role, is_super, bypass = _role_flags("default")
    assert role == settings.DATABASES["default"]["USER"] == embedded.ROLE_APP
    assert not is_super
    assert not bypass


@pytest.mark.django_db
def test_owner_and_worker_roles_bypass_rls_without_superuser():
    for alias, expected in (("owner", embedded.ROLE_OWNER), ("privileged", embedded.ROLE_WORKER)):
        role, is_super, bypass = _role_flags(alias)
        assert (role, is_super, bypass) == (expected, False, True)


def test_health_live(client):
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_health_ready_reports_each_part_with_latency(client):
    response = client.get("/health/ready")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["checks"]) == {"postgres", "redis", "celery_broker"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert check["latency_ms"] >= 0


@pytest.mark.django_db
def test_health_ready_503_names_redis_when_it_is_stopped(client, settings):
    # A Redis of this test's own, so stopping it leaves the suite's server alone.
    with tempfile.TemporaryDirectory(prefix="confab-h-") as tmp:
        redis_dir = Path(tmp)
        sock = embedded.redis_start(redis_dir, persist=False)
        redis_url = f"unix://{sock}?db=0"
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": redis_url}}
        settings.CELERY_BROKER_URL = celery_broker_url(redis_url)
        assert client.get("/health/ready").status_code == 200
        embedded.redis_stop(redis_dir)
        response = client.get("/health/ready")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert set(body["failing"]) == {"redis", "celery_broker"}
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["redis"]["error"]


@pytest.mark.django_db(transaction=True)
def test_celery_task_round_trips_through_a_real_worker(celery_worker):
    result = ping.delay("hello").get(timeout=30)
    assert result == {"echo": "hello", "role": embedded.ROLE_APP}


@pytest.mark.django_db
def test_openapi_schema_validates(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate(schema)
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/me" in schema["paths"]


@pytest.mark.django_db
def test_swagger_ui_and_api_root(client):
    assert client.get("/api/docs/").status_code == 200
    root = client.get("/api/v1/")
    assert root.status_code == 200
    assert root.json()["schema"].endswith("/api/schema/")


@pytest.mark.django_db
def test_api_errors_share_one_format(client):
    unauthenticated = client.get("/api/v1/me")
    assert unauthenticated.status_code == 401
    assert set(unauthenticated.json()) == {"message", "extra"}
    assert unauthenticated["WWW-Authenticate"].startswith("Bearer")
    missing = client.get("/api/v1/no-such-thing")
    assert missing.status_code == 404
    assert missing.json()["message"] == "No API endpoint at /api/v1/no-such-thing."


def test_celery_broker_url_for_a_unix_socket():
    assert celery_broker_url("unix:///tmp/r.sock?db=3") == "redis+socket:///tmp/r.sock?virtual_host=3"
    assert celery_broker_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_settings_read_the_embedded_servers_when_no_url_is_set(tmp_path):
    urls = embedded.embedded_urls(tmp_path)
    assert urls["DATABASE_APP_URL"].startswith(f"postgres://{embedded.ROLE_APP}@/confab?host=")
    assert json.dumps(urls)  # plain strings


@pytest.mark.django_db
def test_the_models_and_their_migrations_agree():
    """Four branches merged into chat's models and migrations at once: a field that only one
    side knows would make the next makemigrations write a migration nobody reviewed."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    try:
        call_command("makemigrations", check=True, dry_run=True, stdout=out)
    except SystemExit:
        pytest.fail(f"models differ from their migrations:\n{out.getvalue()}")
