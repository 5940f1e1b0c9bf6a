"""Production settings: no fallback to the embedded servers, a clean `check --deploy`,
and the embedded server's socket closed to other users."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

BASE_DIR = Path(settings.BASE_DIR)
PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "DJANGO_SECRET_KEY": "p" * 20 + "roduction-Secret-Key-with-enough-variety-0123456789",
    "DJANGO_ALLOWED_HOSTS": "confab.example.com",
    "DATABASE_URL": "postgres://confab_owner:o@db.internal:5432/confab",
    "DATABASE_APP_URL": "postgres://confab_app:a@db.internal:5432/confab",
    "DATABASE_WORKER_URL": "postgres://confab_worker:w@db.internal:5432/confab",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "FIELD_ENCRYPTION_KEYS": settings.FIELD_ENCRYPTION_KEYS[0],
}


def _run(args: list[str], **env_overrides) -> subprocess.CompletedProcess:
    # A clean environment: nothing from this test run's embedded servers leaks in.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "DJANGO_", "CONFAB_"))}
    env = {**inherited, **PRODUCTION_ENV, **env_overrides}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_has_no_warnings_under_production_settings():
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output


def test_production_settings_without_database_url_stop_with_a_sentence():
    result = _run(["manage.py", "check"], DATABASE_URL=None)
    assert result.returncode != 0
    assert "Production needs DATABASE_URL" in result.stderr, result.stderr


def test_production_settings_without_redis_url_stop_with_a_sentence():
    result = _run(["manage.py", "check"], REDIS_URL=None)
    assert result.returncode != 0
    assert "Production needs REDIS_URL" in result.stderr, result.stderr


def test_production_settings_do_not_import_the_embedded_supervisor():
    code = "import django, sys; django.setup(); print(sorted(m for m in sys.modules if m.startswith('config.embedded')))"
    result = _run(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.django_db
def test_content_security_policy_header_allows_only_own_files(client):
    policy = client.get("/accounts/login/").headers["Content-Security-Policy"]
    directives = dict((part.strip().split(" ", 1) + [""])[:2] for part in policy.split(";") if part.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.django_db
def test_embedded_postgres_socket_is_closed_to_other_users():
    with connections["owner"].cursor() as cur:
        cur.execute("SHOW unix_socket_permissions")
        assert cur.fetchone()[0] == "0700"
    socket_dir = Path(settings.DATABASES["owner"]["HOST"])
    if not socket_dir.is_absolute():
        pytest.skip("DATABASE_URL points at a TCP server, not the embedded one")
    sock = socket_dir / ".s.PGSQL.5432"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o700
    assert not socket_dir.stat().st_mode & (stat.S_IWOTH | stat.S_IWGRP)


def test_the_docker_build_context_leaves_out_local_state_and_secrets():
    """`COPY . .` in the Dockerfile would otherwise bake var/ (the embedded database and
    field-encryption.key), .env and the local virtualenv into the image."""
    ignored = {line.strip() for line in (Path(settings.BASE_DIR) / ".dockerignore").read_text().splitlines()}
    assert {"var", ".env", ".venv", ".git"} <= ignored


def test_emailed_links_point_at_the_first_allowed_host_unless_site_url_says_otherwise():
    """Links in mails never take the Host a request came with (accounts/tests/test_attack_mail.py)."""
    code = "import django; django.setup(); from django.conf import settings; print(settings.SITE_URL)"
    derived = _run(["-c", code], DJANGO_ALLOWED_HOSTS=".confab.example.com,internal.example.net")
    assert derived.stdout.strip() == "https://confab.example.com", derived.stderr[-500:]
    given = _run(["-c", code], SITE_URL="https://app.confab.example.com")
    assert given.stdout.strip() == "https://app.confab.example.com", given.stderr[-500:]
    refused = _run(["manage.py", "check"], DJANGO_ALLOWED_HOSTS="*")
    assert refused.returncode != 0 and "SITE_URL" in refused.stderr
