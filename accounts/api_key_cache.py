"""API keys each web process remembers, and forgets as soon as PostgreSQL says they changed.

Reading a key and its owner costs every API request a round trip (about 0.5 ms). A process
keeps the rows it read, by the key's digest, only while it hears every change to them: a
thread per process LISTENs on `accounts_api_key_changed`, on which triggers on accounts_apikey
and accounts_user (accounts migration 0014) name the owner as each update, delete or truncate
commits. A revoked key, a deactivated or deleted owner, changed scopes: the process drops the
owner's rows the moment the notification arrives, milliseconds after the commit, as the
database read would have seen it.

Lost notifications cannot leave a stale row behind:
- the cache is used only while the listener has heard, within LIVENESS seconds, the probe it
  notifies itself every HEARTBEAT seconds (PostgreSQL delivers notifications in commit order, so
  every change committed before the probe was heard first); otherwise every request reads the
  database, as without the cache. A pooler in transaction mode, which would lose notifications,
  never delivers the probe either;
- nor while any of the triggers is missing, disabled, or fires only in `origin` sessions (code
  running before its migration; a change made under session_replication_role = replica, by
  logical replication or by hand, would announce nothing: migration 0015);
- a listener that reconnects forgets everything (notifications sent while it was away are gone);
- a row read from the database is kept only if no notification (and no reconnect) arrived since
  the read began (`epoch`): a change committed between the read and the keeping wins.

Off unless API_KEY_CACHE is on (base settings: on). Tests run in transactions that never
commit, so no notification would ever arrive: the test settings turn it off, and the cache's
own tests turn it on with committed transactions.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time

import psycopg
from django.conf import settings

from config.db.rows import direct_connection_params

logger = logging.getLogger("confab.accounts")

CHANNEL = "accounts_api_key_changed"  # frozen in accounts migration 0014
PROBE_PREFIX = "accounts_api_key_probe_"  # one channel per listener connection
# What announces the changes (accounts migration 0014): without all of them enabled, the cache
# would hear nothing (code deployed before its migration ran, a trigger disabled by hand).
TRIGGERS = (
    "accounts_apikey_changed_update",
    "accounts_apikey_changed_delete",
    "accounts_apikey_changed_truncate",
    "accounts_user_changed_update",
    "accounts_user_changed_delete",
    "accounts_user_changed_truncate",
)
APPLICATION_NAME = "confab api key cache"  # the listener's connection in pg_stat_activity
ALL_USERS = "*"  # a truncate's payload
HEARTBEAT = 1.0
LIVENESS = 3.0
MAX_ENTRIES = 10_000
RECONNECT_DELAY = 1.0

_lock = threading.Lock()
_entries: dict[str, tuple] = {}  # digest -> the key and its owner, as read (accounts.services.api_keys)
_digests_of_user: dict[str, set[str]] = {}
_epoch = 0
_alive_until = 0.0  # time.monotonic() until which the listener is known to hear every change
_listener_pid: int | None = None
_listener: threading.Thread | None = None
_generation = 0  # a listener runs while the generation it started in is current


def enabled() -> bool:
    return bool(getattr(settings, "API_KEY_CACHE", False))


def epoch() -> int:
    """Take before reading a row from the database; pass to `keep`."""
    return _epoch


def remembered(digest: str) -> tuple | None:
    """What `keep` was given for this digest, or None. Shared: the caller copies before changing."""
    if not enabled():
        return None
    _listener_ensure()
    if time.monotonic() >= _alive_until:
        return None
    return _entries.get(digest)


def keep(digest: str, user_id, entry: tuple, *, read_at_epoch: int) -> None:
    """Remember what was read from the database for this digest (the key and its owner), unless
    something changed since `read_at_epoch`. The entry is shared with later requests as it is."""
    if not enabled():
        return
    with _lock:
        if read_at_epoch != _epoch or time.monotonic() >= _alive_until:
            return
        if len(_entries) >= MAX_ENTRIES:
            _forget_all()
        _entries[digest] = entry
        _digests_of_user.setdefault(str(user_id), set()).add(digest)


def forget(user_id: str) -> None:
    """Drop a user's rows (a notification's payload; ALL_USERS drops everything)."""
    global _epoch
    with _lock:
        _epoch += 1
        if user_id == ALL_USERS:
            _forget_all()
            return
        for digest in _digests_of_user.pop(user_id, ()):
            _entries.pop(digest, None)


def _forget_all() -> None:
    global _epoch
    _epoch += 1
    _entries.clear()
    _digests_of_user.clear()


def _set_alive(alive: bool) -> None:
    global _alive_until
    with _lock:
        if not alive:
            _alive_until = 0.0
            _forget_all()
        else:
            _alive_until = time.monotonic() + LIVENESS


def _listener_ensure() -> None:
    """One listener thread per process (a forked worker starts its own)."""
    global _listener_pid
    pid = os.getpid()
    if _listener_pid == pid:
        return
    with _lock:
        if _listener_pid == pid:
            return
        _listener_pid = pid
    _set_alive(False)  # a forked child's copy of its parent's rows is not heard over
    global _listener
    _listener = threading.Thread(target=_listen, args=(_connection_params(), _generation), name="api-key-cache", daemon=True)
    _listener.start()


def listener_stop() -> None:
    """Stop listening and close the connection (the tests, before their database is dropped)."""
    global _generation, _listener_pid
    with _lock:
        _generation += 1
        _listener_pid = None
    _set_alive(False)
    if _listener is not None:
        _listener.join(timeout=HEARTBEAT + 5)


def _connection_params() -> dict:
    return {"connect_timeout": 5} | direct_connection_params("default") | {"application_name": APPLICATION_NAME}


def _listen(params: dict, generation: int) -> None:
    while generation == _generation:
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
                conn.execute(f"LISTEN {CHANNEL}")
                conn.execute(f"LISTEN {probe}")
                # Notifications sent before LISTEN took effect never arrive: start empty.
                _set_alive(False)
                while generation == _generation:
                    announced = _triggers_in_place(conn)
                    _probe_send(conn, probe)
                    for notify in conn.notifies(timeout=HEARTBEAT):
                        if notify.channel == probe:
                            # PostgreSQL delivers notifications in commit order: every change
                            # committed before the probe has been heard, and forgotten, by now.
                            if announced:
                                _set_alive(True)
                        else:
                            forget(notify.payload)
        except Exception:  # noqa: BLE001  any failure: stop trusting the cache, then reconnect
            _set_alive(False)
            if generation != _generation:
                return
            logger.warning("API key cache: listener disconnected; keys are read from the database until it reconnects", exc_info=True)
            time.sleep(RECONNECT_DELAY)


def _triggers_in_place(conn) -> bool:
    enabled_triggers = conn.execute(
        # 'A': fires in every session, replica-role ones too (accounts migration 0015).
        "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s) AND tgenabled = 'A' AND NOT tgisinternal",
        [list(TRIGGERS)],
    ).fetchone()[0]
    if enabled_triggers == len(TRIGGERS):
        return True
    logger.warning(
        "API key cache unused: %d of its %d triggers are in place and fire always (accounts migrations 0014, 0015)",
        enabled_triggers,
        len(TRIGGERS),
    )
    return False


def _probe_send(conn, probe: str) -> None:
    """A notification to this listener alone. Hearing it proves the path works end to end; a
    pooler in transaction mode (pgbouncer), which runs LISTEN and NOTIFY on different server
    connections, never delivers it, and the cache then stays unused."""
    conn.execute(f"NOTIFY {probe}")
