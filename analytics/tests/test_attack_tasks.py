"""Analytics' periodic tasks (an attacker's review, 2026-12-01): the log flush (logs_flush_task)
racing itself when its Redis lock lapses. Real PostgreSQL and Redis; the order is set through
PostgreSQL's lock table."""

import threading

import psycopg
import pytest
from django.db import connections
from django_redis import get_redis_connection

from analytics import buffer
from analytics.tests.test_logs import _api_log_row, _rows
from config.tests.races import on_a_thread, until

pytestmark = pytest.mark.django_db(transaction=True)


def _raw_owner():
    params = connections["owner"].get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(key, None)
    return psycopg.connect(**params)


def _inserts_waiting() -> int:
    """Flush inserts into the API log waiting on a lock, across the server."""
    with _raw_owner() as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'analytics_apilog'::regclass").fetchone()[0]


def test_two_flushes_overlapping_after_the_lock_lapsed_lose_no_row():
    """buffer_flush holds a Redis lock (LOCK_TIMEOUT, 60 s, renewed after each batch) because its
    trim removes the first N rows of the list, which must be the N rows it read. A batch whose
    INSERT waits longer than that (here: the API log table is locked, as the daily partition
    prune's DETACH PARTITION does, or any slow database) lets the lock lapse; the next beat's
    flush (every 10 s) takes it, reads the SAME head rows and waits too. When the insert goes
    through, both insert the same batch (ON CONFLICT: once) and both trim N rows off the head:
    the second trim removes the next N rows, which nobody wrote. The lapse of the lock is made
    by deleting its key (what its expiry does). Four rows, batches of two; the first flush, which
    waited first, goes through first (a second locker queued between the two keeps that order)."""
    redis = get_redis_connection("default")
    rows = [_api_log_row() for _ in range(4)]
    for row in rows:
        buffer.buffer_push("api_log", row)

    blocker = _raw_owner()
    blocker.execute("LOCK TABLE analytics_apilog IN ACCESS EXCLUSIVE MODE")
    errors = []

    def flush():
        buffer.buffer_flush("api_log", batch_size=2)

    # A second locker queued behind the first flush and ahead of the second holds the second
    # back until the first has inserted, trimmed and stopped: the order the waits began in.
    second_locker, locked, release = _raw_owner(), threading.Event(), threading.Event()

    def lock_after_first():
        second_locker.execute("LOCK TABLE analytics_apilog IN ACCESS EXCLUSIVE MODE")
        locked.set()
        release.wait(30)
        second_locker.rollback()
        second_locker.close()

    first = on_a_thread(flush, errors)
    until(lambda: _inserts_waiting() == 1, "the first flush waits at its insert")
    locker = threading.Thread(target=lock_after_first)
    locker.start()
    until(lambda: _inserts_waiting() == 2, "the second locker queues behind it")
    redis.delete("analytics:buffer:lock:api_log")  # 60 s have passed: the lock expired
    second = on_a_thread(flush, errors)
    until(lambda: _inserts_waiting() == 3, "the next beat's flush waits at its insert too")
    blocker.rollback()
    blocker.close()
    first.join(timeout=30)
    assert locked.wait(30)
    release.set()
    locker.join(timeout=30)
    second.join(timeout=30)

    uuids = [row["request_uuid"] for row in rows]
    written = _rows("analytics_apilog", "request_uuid = ANY(%s::uuid[])", [uuids])
    left = buffer.buffer_length("api_log")
    # every row is either written or still queued for the next flush; none is lost
    assert written + left == 4, f"{written} written, {left} still queued, {4 - written - left} lost ({errors!r})"
    assert errors == []
