"""A real ASGI server for tests and benchmarks: `make run`'s gunicorn + uvicorn workers,
on a free loopback port, against the test database (config.settings.serving_test)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connections

from config import embedded

LOAD_SCRIPT = Path(__file__).with_name("serving_load.py")


def _database_url(alias: str) -> str:
    db = connections[alias].settings_dict  # NAME is the test database's
    return f"postgres://{db['USER']}@/{db['NAME']}?host={db['HOST']}"


def server_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.serving_test",
        "DATABASE_URL": _database_url("owner"),
        "DATABASE_APP_URL": _database_url("default"),
        "DATABASE_WORKER_URL": _database_url("privileged"),
        "REDIS_URL": settings.REDIS_URL,
        **extra,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wsgi_command(*, bind: str, workers: int) -> list[str]:
    """The server before issue #10 (gunicorn sync workers, WSGI): the bench's baseline."""
    return [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", bind, "--workers", str(workers), "--no-control-socket"]


class Served(str):
    """The server's base URL, knowing the server's process id."""

    pid: int


@contextmanager
def served(*, workers: int, wsgi: bool = False, app: str | None = None, **env: str) -> Iterator[Served]:
    """Start the server, wait for /health/live, yield its base URL, stop it (its whole process group)."""
    port = _free_port()
    bind = f"127.0.0.1:{port}"
    if wsgi:
        command = wsgi_command(bind=bind, workers=workers)
    else:  # `app`: another ASGI application to compare with ours (bench_serving)
        command = embedded.web_command(bind=bind, workers=workers, access_log=False, **({"app": app} if app else {}))
    proc = subprocess.Popen(command, cwd=settings.BASE_DIR, env=server_env(**env), start_new_session=True)
    base = Served(f"http://127.0.0.1:{port}")
    base.pid = proc.pid
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            try:
                if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health/live"
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
