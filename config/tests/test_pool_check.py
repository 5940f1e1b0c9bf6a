"""The pool's checkout check (config/db/backend): a connection reset at check-in moments ago is
handed out without another round trip; one idle longer is pinged and, if dead, replaced.

A dead connection is made the way a restarted server or a dropped link makes one: its backend is
terminated from another session while it sits in the pool, so the client does not know."""

import time

import psycopg
import pytest
from django.db import connections

from config.db.backend.base import _CHECKED_IN_AT, RECENTLY_CHECKED_SECONDS, DatabaseWrapper
from config.db.rls import pool_connection_reset

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pool():
    settings = connections["default"].settings_dict
    options = {**settings["OPTIONS"], "pool": {"min_size": 1, "max_size": 1, "reset": pool_connection_reset}}
    wrapper = DatabaseWrapper({**settings, "OPTIONS": options, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": True}, alias="pool_check_test")
    wrapper.pool.open(wait=True)
    yield wrapper.pool
    wrapper.close_pool()


def _terminate(pid: int) -> None:
    """End a backend from another session of the same role, and wait until it is gone."""
    with connections["default"].cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(100):
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if not cur.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"backend {pid} is still there")


def _checked_in_dead(pool, *, idle_seconds: float) -> int:
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)  # RESET ALL, then stamped, on one of the pool's worker threads
    for _ in range(100):
        if hasattr(conn, _CHECKED_IN_AT):
            break
        time.sleep(0.05)
    setattr(conn, _CHECKED_IN_AT, getattr(conn, _CHECKED_IN_AT) - idle_seconds)
    _terminate(pid)
    return pid


def test_a_connection_checked_in_moments_ago_is_handed_out_without_a_ping(pool):
    pid = _checked_in_dead(pool, idle_seconds=0)
    conn = pool.getconn()
    try:
        # Not pinged: the dead connection comes back as it is, and its next statement fails.
        assert conn.info.backend_pid == pid
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        pool.putconn(conn)  # broken: the pool discards it and opens another
    conn = pool.getconn()
    assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(conn)


def test_a_connection_idle_longer_is_pinged_and_a_dead_one_replaced(pool):
    pid = _checked_in_dead(pool, idle_seconds=RECENTLY_CHECKED_SECONDS + 1)
    conn = pool.getconn()
    try:
        assert conn.info.backend_pid != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.putconn(conn)
