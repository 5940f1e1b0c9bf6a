"""The log buffer: API logs, events and audit entries wait in Redis lists until Celery
writes them to PostgreSQL in batches.

The request path only RPUSHes JSON (the app role may not insert into the logs; API log rows
are pushed a process's batch at a time, buffer_push_soon); the
flush reads a batch from the head, inserts it as the worker role with
ON CONFLICT (uuid, created_at) DO NOTHING, and only then trims the batch off the list.
So a flush that dies between the insert and the trim re-inserts nothing twice, and
nothing is lost while no worker runs: the list just grows. A row that cannot be parsed
goes to `analytics:buffer:dead:<kind>` instead of blocking the queue.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, DataError, IntegrityError, connections, transaction
from django.dispatch import receiver

from config.cache import REDIS_ERRORS, redis_client, redis_script
from config.db import rls
from config.lifecycle import process_stopping

logger = logging.getLogger("confab.analytics.buffer")

FLUSH_REASON = "analytics buffer flush"  # not audited: a flush must not audit itself
WRITE_THROUGH_REASON = "analytics buffer write-through"  # not audited either
LOCK_TIMEOUT = 60  # seconds; renewed after every batch


@dataclass(frozen=True)
class Kind:
    table: str
    key_column: str
    columns: tuple[tuple[str, str], ...]  # (column, coercion) after key_column and created_at


KINDS = {
    "api_log": Kind(
        "analytics_apilog",
        "request_uuid",
        (
            ("user_id", "uuid?"),
            ("api_key_id", "uuid?"),
            ("route", "str:200"),
            ("method", "str:10"),
            ("status", "int"),
            ("duration_ms", "int"),
            ("ip", "inet?"),
            ("user_agent", "str:1000"),
            ("error", "str:2000"),
        ),
    ),
    "event": Kind(
        "analytics_event",
        "event_uuid",
        (
            ("user_id", "uuid?"),
            ("organization_id", "uuid?"),
            ("name", "str:100"),
            ("properties", "json"),
            ("source", "str:8"),
            ("session_id", "str:64"),
        ),
    ),
    "audit": Kind(
        "analytics_auditlog",
        "entry_uuid",
        (
            ("user_id", "uuid?"),
            ("organization_id", "uuid?"),
            ("action", "str:40"),
            ("table_name", "str:100"),
            ("record_id", "str:64"),
            ("old_values", "json?"),
            ("new_values", "json?"),
            ("ip", "inet?"),
            ("user_agent", "str:1000"),
            ("detail", "json"),
        ),
    ),
}
_SQL_TYPES = {"uuid?": "uuid", "int": "integer", "inet?": "inet", "json": "jsonb", "json?": "jsonb"}


class BadRow(ValueError):
    """A buffered row that can never be inserted."""


def buffer_key(kind: str) -> str:
    return f"analytics:buffer:{kind}"


def dead_key(kind: str) -> str:
    return f"analytics:buffer:dead:{kind}"


class _Encoder(DjangoJSONEncoder):
    def default(self, o):
        # Full microseconds (DjangoJSONEncoder keeps milliseconds): created_at is half the row's key.
        return o.isoformat() if isinstance(o, datetime) else super().default(o)


def _encoded(kind: str, row: dict) -> str:
    spec = KINDS[kind]
    if not row.get(spec.key_column) or not row.get("created_at"):
        raise ValueError(f"A buffered {kind} row needs {spec.key_column} and created_at.")
    return json.dumps(row, cls=_Encoder)


def buffer_push(kind: str, row: dict) -> None:
    """Queue one row; it must carry its uuid (the kind's key column) and created_at.
    While Redis is unreachable the row is written straight to PostgreSQL instead."""
    _push(kind, [_encoded(kind, row)])


def buffer_push_soon(kind: str, row: dict) -> None:
    """Queue one row with the others this process queues within API_LOG_BATCH_SECONDS: one
    RPUSH for them all, from a thread of its own, instead of a Redis round trip in each
    request. What it gives up: a process killed outright (SIGKILL, a crash) loses the rows of
    its last interval; one that stops (gunicorn's restarts and shutdown, config/lifecycle.py)
    sends them first.
    Audit entries and events, which must not be lost, go by buffer_push. 0 pushes at once."""
    raw = _encoded(kind, row)
    if settings.API_LOG_BATCH_SECONDS <= 0:
        _push(kind, [raw])
    else:
        _batch.add(kind, raw)


def _push(kind: str, raws: list[str]) -> None:
    try:
        redis_client().rpush(buffer_key(kind), *raws)
    except REDIS_ERRORS:
        _write_through(kind, raws)


def _write_through(kind: str, raws: list[str]) -> None:
    """Redis is down: insert the rows now (same parse and insert as the flush); a row that
    still cannot be written is logged and dropped, never the request's failure."""
    logger.warning("Redis unreachable; %d %s row(s) written through to PostgreSQL", len(raws), kind)
    rows = []
    for raw in raws:
        try:
            rows.append(_parse(kind, raw))
        except BadRow:
            logger.exception("buffered %s row lost (Redis unreachable, unparseable): %s", kind, raw[:500])
    if not rows:
        return
    try:
        try:
            with rls.privileged(reason=WRITE_THROUGH_REASON, audited=False):
                _insert(kind, rows)
        except (DataError, IntegrityError):  # one row's data: the others still go in, in a context (and transaction) of their own
            with rls.privileged(reason=WRITE_THROUGH_REASON, audited=False):
                _insert_each(kind, rows)
    except DatabaseError:
        logger.exception("%d buffered %s row(s) lost (Redis unreachable, write-through failed)", len(rows), kind)


class _Batch:
    """The rows buffer_push_soon queued in this process, sent by a thread of its own: it sleeps
    until a row comes, waits out the interval for the rest, and sends them kind by kind. Made
    again in a forked child (gunicorn's workers): the parent's rows stay the parent's."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str]] = []
        self._arrived = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, kind: str, raw: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="analytics-buffer-batch", daemon=True)
                self._thread.start()
            self._rows.append((kind, raw))
            if len(self._rows) == 1:
                self._arrived.set()

    def send(self) -> int:
        """Push what is queued now (also at exit); the number of rows."""
        with self._lock:
            rows, self._rows = self._rows, []
        by_kind: dict[str, list[str]] = {}
        for kind, raw in rows:
            by_kind.setdefault(kind, []).append(raw)
        for kind, raws in by_kind.items():
            try:
                _push(kind, raws)
            except Exception:  # the thread must go on: the log is not worth losing the next batches
                logger.exception("%d buffered %s row(s) lost", len(raws), kind)
        return len(rows)

    def _run(self) -> None:
        while True:
            self._arrived.wait()
            self._arrived.clear()
            time.sleep(settings.API_LOG_BATCH_SECONDS)
            self.send()
            connections.close_all()  # this thread's connections (a write-through's) go back to the pool


_batch = _Batch()


def _batch_renew_in_child() -> None:
    global _batch
    _batch = _Batch()


os.register_at_fork(after_in_child=_batch_renew_in_child)


@receiver(process_stopping)
def _batch_send_before_stopping(**kwargs) -> None:
    _batch.send()


def buffer_length(kind: str) -> int:
    return redis_client().llen(buffer_key(kind))


def _coerce(value, coercion: str):
    optional = coercion.endswith("?")
    if value is None or (optional and value == ""):
        if optional:
            return None
        if coercion.startswith("str"):
            return ""
        if coercion == "json":
            return {}
        raise BadRow("missing value")
    if coercion == "uuid?":
        return str(uuid.UUID(str(value)))
    if coercion == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise BadRow(f"not an integer: {value!r}")
        return value
    if coercion == "inet?":
        return str(ipaddress.ip_address(str(value)))
    if coercion.startswith("str:"):
        return str(value)[: int(coercion[4:])].replace("\x00", "")
    return value  # json, json?: already parsed


def _parse(kind: str, raw: bytes) -> dict:
    """The row as the insert wants it, or BadRow."""
    spec = KINDS[kind]
    try:
        row = json.loads(raw)
        if not isinstance(row, dict):
            raise BadRow("not a JSON object")
        created_at = datetime.fromisoformat(row["created_at"])
        if created_at.tzinfo is None:
            raise BadRow("created_at has no time zone")
        parsed = {spec.key_column: str(uuid.UUID(str(row[spec.key_column]))), "created_at": created_at.isoformat()}
        for column, coercion in spec.columns:
            parsed[column] = _coerce(row.get(column), coercion)
        return parsed
    except BadRow:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise BadRow(f"{type(exc).__name__}: {exc}") from exc


def _insert(kind: str, rows: list[dict]) -> int:
    """One INSERT ... SELECT from the batch as JSON, skipping rows already written."""
    spec = KINDS[kind]
    columns = [spec.key_column, "created_at", *(c for c, _ in spec.columns)]
    types = ["uuid", "timestamptz", *(_SQL_TYPES.get(coercion, "text") for _, coercion in spec.columns)]
    record = ", ".join(f"{c} {t}" for c, t in zip(columns, types))
    names = ", ".join(columns)
    with connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute(
            f"INSERT INTO {spec.table} ({names}) SELECT {names} FROM jsonb_to_recordset(%s::jsonb) AS r({record}) "
            f"ON CONFLICT ({spec.key_column}, created_at) DO NOTHING",
            [json.dumps(rows)],
        )
        return cur.rowcount


def _insert_each(kind: str, rows: list[dict]) -> tuple[int, list[int]]:
    """Row by row (after a batch failed on its data): the inserted count and the rows the database refused."""
    inserted, refused = 0, []
    for index, row in enumerate(rows):
        try:
            with transaction.atomic(using=rls.PRIVILEGED_ALIAS):
                inserted += _insert(kind, [row])
        except (DataError, IntegrityError):
            logger.warning("buffered %s row refused by the database", kind, exc_info=True)
            refused.append(index)
    return inserted, refused


# Drop a batch off the head of the list (and keep its bad rows aside), atomically, and only while
# the flusher still holds the kind's lock: one whose lock lapsed (a batch that waited longer than
# LOCK_TIMEOUT, behind a partition's DETACH say) may share the head with the next flusher, and both
# trimming would drop rows neither wrote. KEYS: lock, list, dead list. ARGV: lock token, count, dead rows...
_TRIM_IF_LOCKED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #ARGV > 2 then redis.call('RPUSH', KEYS[3], unpack(ARGV, 3)) end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
return 1
"""


def _trim(kind: str, lock, count: int, dead: list[bytes]) -> bool:
    """False when the lock had lapsed: nothing trimmed (the rows written stay queued, and the
    flusher holding the lock now writes them again, once: the insert skips rows already there)."""
    keys = [lock.name, buffer_key(kind), dead_key(kind)]
    return bool(redis_script(_TRIM_IF_LOCKED)(keys=keys, args=[lock.local.token, count, *dead]))


def buffer_flush(kind: str, batch_size: int = 1000, *, max_rows: int = 100_000) -> int:
    """Write what the buffer holds (up to `max_rows` per run); returns the rows inserted.

    One flusher per kind at a time (a Redis lock): the trim removes the first N rows of
    the list, which must be the N rows this flusher read.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown buffer kind '{kind}'.")
    redis = redis_client()
    lock = redis.lock(f"analytics:buffer:lock:{kind}", timeout=LOCK_TIMEOUT)
    if not lock.acquire(blocking=False):
        return 0
    inserted = read = 0
    try:
        while read < max_rows:
            raws = redis.lrange(buffer_key(kind), 0, min(batch_size, max_rows - read) - 1)
            if not raws:
                break
            rows, positions, dead = [], [], []
            for raw in raws:
                try:
                    rows.append(_parse(kind, raw))
                    positions.append(raw)
                except BadRow as exc:
                    logger.error("unparseable %s row moved to %s: %s", kind, dead_key(kind), exc)
                    dead.append(raw)
            if rows:
                try:
                    with rls.privileged(reason=FLUSH_REASON, audited=False):
                        inserted += _insert(kind, rows)
                except (DataError, IntegrityError):
                    with rls.privileged(reason=FLUSH_REASON, audited=False):
                        count, refused = _insert_each(kind, rows)
                    inserted += count
                    dead.extend(positions[i] for i in refused)
            if not _trim(kind, lock, len(raws), dead):
                logger.warning("buffer lock for %s lapsed during the flush; its batch stays queued", kind)
                break
            read += len(raws)
            lock.reacquire()
    finally:
        try:
            lock.release()
        except Exception:  # expired: another flusher may hold it now
            logger.warning("buffer lock for %s expired during the flush", kind)
    return inserted


def buffer_flush_all(batch_size: int = 1000) -> dict[str, int]:
    """Flush every kind; one failing kind (database down) does not stop the others."""
    report = {}
    for kind in KINDS:
        try:
            report[kind] = buffer_flush(kind, batch_size)
        except DatabaseError:
            logger.exception("flushing the %s buffer failed; its rows stay queued", kind)
            report[kind] = -1
    return report
