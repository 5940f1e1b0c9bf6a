"""Attack review: the newcomer's `make run` / `make test` bootstrap (config/embedded.py) and
the operator's production settings and docker-compose, driven as a careless newcomer and a
hostile environment would: a second run, a closed terminal, a stop signal during start-up,
paths with spaces, stale pid files, unreachable or half-set URLs, malformed values.

Every supervisor run here is a real `python -m config.embedded run` in its own session under
a throwaway CONFAB_VAR_DIR, with a timeout; whatever it leaves behind is killed (by process
group, then by the var dir or port in its command line) and its servers stopped."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from config import embedded
from config.tests.test_production import PRODUCTION_ENV

BASE_DIR = Path(settings.BASE_DIR)
# Variables the test run's own embedded servers set: none may leak into a supervisor under test.
LEAKY_PREFIXES = ("DATABASE_", "REDIS_", "CELERY_", "DJANGO_", "CONFAB_", "FIELD_ENCRYPTION_KEYS", "PORT", "WEB_CONCURRENCY")
UNREACHABLE = {
    "DATABASE_URL": "postgres://confab_owner@127.0.0.1:1/confab",
    "DATABASE_APP_URL": "postgres://confab_app@127.0.0.1:1/confab",
    "DATABASE_WORKER_URL": "postgres://confab_worker@127.0.0.1:1/confab",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


# --- helpers -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES)}
    env.update({"WEB_CONCURRENCY": "1", "CELERY_CONCURRENCY": "1"})
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


@pytest.fixture
def var_dir():
    """A short throwaway var dir (unix socket paths stay short); everything under it stopped after."""
    root = Path(tempfile.mkdtemp(prefix="atkb-", dir="/tmp"))
    var = root / "var"
    yield var
    _stop_everything_under(var)
    shutil.rmtree(root, ignore_errors=True)


def _stop_everything_under(var: Path, port: int | None = None) -> None:
    needles = [str(var)] + ([f"127.0.0.1:{port}"] if port else [])
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and any(n in cmdline for n in needles) and "pginstall/bin/postgres" not in cmdline:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    with contextlib.suppress(Exception):
        embedded.redis_stop(var / "redis")
    with contextlib.suppress(Exception):
        embedded.postgres_stop(var / "postgres")
    for proc in psutil.process_iter(["pid", "cmdline"]):  # a postgres the stop above missed
        if str(var) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


class Supervisor:
    """`python -m config.embedded run` in its own session (as a terminal's foreground job)."""

    def __init__(self, var: Path, **env):
        port = env.get("PORT") or ""
        self.var, self.port = var, int(port) if port.isdigit() else None
        var.parent.mkdir(parents=True, exist_ok=True)
        self.log = var.parent / f"run-{time.monotonic_ns()}.out"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "config.embedded", "run"],
            cwd=BASE_DIR,
            env=_clean_env(CONFAB_VAR_DIR=str(var), **env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                return text in self.output
            time.sleep(0.2)
        return False

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def group(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(proc.pid) == self.proc.pid:
                    found.append(proc)
        return found

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        self._out.close()
        _stop_everything_under(self.var, self.port)


def _left_running(var: Path, port: int) -> list[str]:
    """Processes still running that this run started: by var dir, port, or as gunicorn/celery on it."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and (str(var) in cmdline or f"127.0.0.1:{port}" in cmdline):
            left.append(f"{proc.pid} {cmdline[:120]}")
    return left


def _postgres_answers(var: Path) -> bool:
    import psycopg

    url = embedded.embedded_urls(var)["DATABASE_ADMIN_URL"]
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def _redis_answers(var: Path) -> bool:
    import redis

    client = redis.Redis(unix_socket_path=str(embedded.redis_socket_path(var / "redis")), socket_connect_timeout=1, retry=None)
    try:
        return client.ping()
    except redis.RedisError:
        return False


def _run_supervisor_to_exit(var: Path, timeout: float = 60, **env) -> subprocess.CompletedProcess:
    var.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "config.embedded", "run"],
        cwd=BASE_DIR,
        env=_clean_env(CONFAB_VAR_DIR=str(var), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def _production(args: list[str], **overrides) -> subprocess.CompletedProcess:
    env = _clean_env(**{**PRODUCTION_ENV, "FIELD_ENCRYPTION_KEYS": settings.FIELD_ENCRYPTION_KEYS[0], **overrides})
    return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


# --- a second run, a closed terminal, a stop signal during start-up ---------------------


def test_a_second_run_that_cannot_serve_leaves_the_first_runs_servers_running(var_dir):
    """The first `make run` is serving; a second one on the same var/ (another terminal, or
    the same one after the first was orphaned) reuses its PostgreSQL and Redis, fails to bind
    the port, and on its way out stops the servers the first run is still using."""
    embedded.postgres_start(var_dir / "postgres")  # the first run's servers
    embedded.redis_start(var_dir / "redis")
    port = _free_port()
    with socket.socket() as first_web:  # the first run's web server holds the port
        first_web.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first_web.bind(("127.0.0.1", port))
        first_web.listen()
        second = Supervisor(var_dir, PORT=str(port))
        try:
            code = second.wait(timeout=180)
            assert code not in (None, 0), second.output[-3000:]
            assert _postgres_answers(var_dir), "the second run stopped the PostgreSQL the first run serves from"
            assert _redis_answers(var_dir), "the second run stopped the Redis the first run serves from"
        finally:
            second.kill()


def test_closing_the_terminal_stops_the_web_server_worker_beat_and_both_servers(var_dir):
    """Closing the terminal sends SIGHUP to the foreground job: the supervisor dies without
    its clean-up, gunicorn takes SIGHUP as "reload" and keeps serving, and PostgreSQL and Redis
    (in their own sessions) run on with nobody to stop them."""
    port = _free_port()
    run = Supervisor(var_dir, PORT=str(port))
    try:
        assert run.wait_for("Serving http://", timeout=180), run.output[-3000:]
        time.sleep(2)  # gunicorn's worker booted
        os.killpg(run.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (_left_running(var_dir, port) or _postgres_answers(var_dir)):
            time.sleep(0.5)
        assert _left_running(var_dir, port) == [], run.output[-2000:]
        assert not _postgres_answers(var_dir)
        assert not _redis_answers(var_dir)
    finally:
        run.kill()


def test_a_stop_signal_during_start_up_stops_before_serving(var_dir):
    """SIGTERM (an IDE's stop button, `kill`, systemd) while the database migrates: the
    handler only sets a flag read once everything runs, so the supervisor goes on to load the
    demo data and start worker, beat and web, announces "Serving", and only then stops."""
    run = Supervisor(var_dir, PORT=str(_free_port()))
    try:
        assert run.wait_for("Redis ready", timeout=120), run.output[-3000:]
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) is not None, run.output[-3000:]
        assert "Serving http://" not in run.output, run.output[-3000:]
        assert "Starting gunicorn" not in run.output
    finally:
        run.kill()


# --- paths and stale files under var/ ----------------------------------------------------


@pytest.fixture
def spaced_var():
    root = Path(tempfile.mkdtemp(prefix="atkb sp-", dir="/tmp"))  # "~/My Projects/confab" on a Mac
    yield root / "var"
    _stop_everything_under(root / "var")
    shutil.rmtree(root, ignore_errors=True)


def test_embedded_redis_starts_under_a_path_with_a_space(spaced_var):
    try:
        sock = embedded.redis_start(spaced_var / "redis", persist=False)
    except subprocess.CalledProcessError:
        log = spaced_var / "redis" / "redis.log"
        pytest.fail(f"redis-server refused its generated config: {log.read_text()[-300:] if log.exists() else ''}")
    assert sock.exists() and _redis_answers(spaced_var)


def test_embedded_postgres_starts_under_a_path_with_a_space(spaced_var):
    try:
        embedded.postgres_start(spaced_var / "postgres")
    except subprocess.CalledProcessError:
        log = spaced_var / "postgres" / "log"
        pytest.fail(f"PostgreSQL did not start: {log.read_text()[-300:] if log.exists() else ''}")
    assert _postgres_answers(spaced_var)


def test_a_stale_postmaster_pid_naming_another_live_process_is_not_taken_for_a_running_server(var_dir):
    """After a crash or reboot, postmaster.pid is left behind and its pid may now belong to
    any process: the supervisor then reports "PostgreSQL ready" with no server behind the
    socket (and `postgres_stop` signals that unrelated process)."""
    data = var_dir / "postgres"
    embedded.postgres_start(data)
    pid_file = (data / "postmaster.pid").read_text().splitlines()
    embedded.postgres_stop(data)
    unrelated = subprocess.Popen(["sleep", "120"])
    try:
        (data / "postmaster.pid").write_text("\n".join([str(unrelated.pid), *pid_file[1:]]) + "\n")
        embedded.postgres_start(data)
        assert _postgres_answers(var_dir), "postgres_start returned, but no server accepts connections"
    finally:
        unrelated.kill()
        unrelated.wait()


def test_the_embedded_redis_data_is_not_readable_by_other_users(var_dir):
    """The sockets are 0700 and PostgreSQL's data dir 0700 ("only this OS user"), but Redis's
    dump (sessions, cache, buffered audit rows, broker messages) lands 0644 in a 0755 var/redis."""
    import redis

    embedded.redis_start(var_dir / "redis", persist=True)
    client = redis.Redis(unix_socket_path=str(embedded.redis_socket_path(var_dir / "redis")))
    client.set("session:x", "secret")
    client.save()
    dump, directory = var_dir / "redis" / "dump.rdb", var_dir / "redis"
    readable_by_others = stat.S_IMODE(dump.stat().st_mode) & 0o044 and stat.S_IMODE(directory.stat().st_mode) & 0o011
    assert not readable_by_others, (oct(dump.stat().st_mode), oct(directory.stat().st_mode))


# --- external servers: unreachable, half-set, fresh checkout -----------------------------


def test_external_servers_on_a_fresh_checkout_without_var(monkeypatch, tmp_path):
    """README "External PostgreSQL and Redis": export the URLs, `make run`. On a fresh clone
    there is no var/, and writing var/field-encryption.key raises FileNotFoundError."""
    for name, value in {**UNREACHABLE, "REDIS_URL": os.environ["REDIS_URL"]}.items():  # a Redis that answers (checked)
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FIELD_ENCRYPTION_KEYS", raising=False)
    env = embedded.Servers(tmp_path / "fresh-clone" / "var", persist=False).start()
    assert env["FIELD_ENCRYPTION_KEYS"]


def test_an_unreachable_database_admin_url_stops_with_a_sentence_not_a_traceback(var_dir):
    env = {**UNREACHABLE, "REDIS_URL": os.environ["REDIS_URL"], "DATABASE_ADMIN_URL": "postgres://postgres@127.0.0.1:1/postgres"}
    result = _run_supervisor_to_exit(var_dir, **env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output, output[-1500:]
    assert "DATABASE_ADMIN_URL" in output


def test_database_admin_url_without_the_app_url_stops_with_a_sentence_not_a_key_error(var_dir):
    env = {**UNREACHABLE, "DATABASE_APP_URL": None, "DATABASE_ADMIN_URL": "postgres://postgres@127.0.0.1:1/postgres"}
    result = _run_supervisor_to_exit(var_dir, **env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "KeyError" not in output and "Traceback" not in output, output[-1500:]
    assert "DATABASE_APP_URL" in output


def test_an_unreachable_redis_url_stops_the_run_with_a_sentence_instead_of_serving(var_dir):
    """Embedded PostgreSQL, REDIS_URL pointing nowhere: nothing checks it, so `make run`
    says "Serving" and runs on with the worker and beat retrying the broker forever."""
    run = Supervisor(var_dir, PORT=str(_free_port()), REDIS_URL="redis://127.0.0.1:1/0")
    try:
        code = run.wait(timeout=90)
        assert "Serving http://" not in run.output, "served with an unreachable REDIS_URL"
        assert code not in (None, 0)
        assert "REDIS_URL" in run.output
    finally:
        run.kill()


def test_a_malformed_port_is_refused_with_a_sentence_before_anything_starts(var_dir):
    """PORT=abc is read raw: the servers start, the database migrates, the demo data loads,
    "Serving http://127.0.0.1:abc" is printed, then gunicorn dies and the run stops."""
    run = Supervisor(var_dir, PORT="abc")
    try:
        code = run.wait(timeout=120)
        assert code not in (None, 0)
        assert "Serving http://" not in run.output, run.output[-1500:]
        assert re.search(r"\[confab\].*PORT", run.output), run.output[-1500:]
    finally:
        run.kill()


# --- demo data ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_demo_usage_is_not_recorded_again_a_week_later():
    """demo_usage's "once" rests on request-id dedupe, whose ids are pruned after 7 days
    (usage_requests_prune, a beat task): the next `make run` records the 30 days again."""
    from analytics import services

    call_command("demo_data", verbosity=0)
    call_command("demo_usage", verbosity=0)
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT count(*) FROM analytics_tokenusage")
        before = cur.fetchone()[0]
        cur.execute("UPDATE analytics_usagerequest SET created_at = created_at - %s", [timedelta(days=8)])
    services.usage_requests_prune()  # the nightly task, a week on
    call_command("demo_usage", verbosity=0)
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT count(*) FROM analytics_tokenusage")
        assert cur.fetchone()[0] == before


# --- production and docker-compose -------------------------------------------------------


def test_production_refuses_the_placeholder_secret_key_from_env_example():
    placeholder = re.search(r"^DJANGO_SECRET_KEY=(.+)$", (BASE_DIR / ".env.example").read_text(), re.M).group(1)
    result = _production(["manage.py", "check"], DJANGO_SECRET_KEY=placeholder)
    assert result.returncode != 0, "production starts with the secret key published in .env.example"
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_refuses_an_empty_allowed_hosts():
    """`DJANGO_ALLOWED_HOSTS=` gives []: every request is answered 400, with nothing said at start."""
    result = _production(["manage.py", "check"], DJANGO_ALLOWED_HOSTS="")
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS" in result.stderr


def test_docker_compose_requires_field_encryption_keys_like_the_other_secrets():
    """Production refuses to start without FIELD_ENCRYPTION_KEYS (config/apps.py), yet compose
    defaults it to empty and the README's list of what to set leaves it out: `docker-compose up`
    as documented leaves web, worker and beat in a restart loop."""
    compose = (BASE_DIR / "docker-compose.yml").read_text()
    assert "${FIELD_ENCRYPTION_KEYS:?" in compose, re.search(r"FIELD_ENCRYPTION_KEYS:.*", compose).group(0)


@pytest.mark.django_db
def test_docker_compose_web_health_check_passes_once_allowed_hosts_names_the_real_domain(client, settings):
    """The web service's health check fetches http://127.0.0.1:8000/health/ready; once the
    operator sets DJANGO_ALLOWED_HOSTS to their domain, that Host is refused (400) and the
    container is never healthy."""
    import yaml

    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    probe = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    url = re.search(r"http://([^/'\"]+)(/[^'\")]*)", probe)
    host, path = url.group(1), url.group(2)
    settings.ALLOWED_HOSTS = ["confab.example.com"]
    settings.SECURE_SSL_REDIRECT, settings.SECURE_REDIRECT_EXEMPT = True, [r"^health/"]
    response = client.get(path, HTTP_HOST=host)
    assert response.status_code == 200, (host, path, response.status_code)


# --- probed and held ------------------------------------------------------------------------


def test_held_redis_left_by_a_killed_run_is_replaced(var_dir):
    """kill -9 of redis-server leaves redis.sock and redis.pid: the next start replaces them."""
    embedded.redis_start(var_dir / "redis", persist=False)
    pid = int((var_dir / "redis" / "redis.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embedded.redis_socket_path(var_dir / "redis").exists()
    embedded.redis_start(var_dir / "redis", persist=False)
    assert _redis_answers(var_dir)


def test_held_postgres_killed_with_sigkill_starts_again(var_dir):
    data = var_dir / "postgres"
    embedded.postgres_start(data)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20  # until its parent reaps it (a zombie still has the pid)
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    embedded.postgres_start(data)
    assert _postgres_answers(var_dir)


def test_held_redis_socket_of_a_deep_var_dir_is_shortened(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "redis"
    assert len(str(embedded.redis_socket_path(deep))) <= embedded.SOCKET_PATH_MAX


def test_held_production_without_a_secret_key_or_allowed_hosts_stops_with_a_sentence():
    for name in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"):
        result = _production(["manage.py", "check"], **{name: None})
        assert result.returncode != 0 and name in result.stderr, result.stderr[-500:]
    result = _production(
        ["-c", "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"], DJANGO_DEBUG="true"
    )
    assert result.stdout.strip() == "False", result.stderr[-500:]
