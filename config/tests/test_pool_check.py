"""The pool (config/db/backend): a connection goes back with no session state; one reset at
check-in moments ago is handed out without another round trip; one idle longer is pinged and,
if dead, replaced.

A dead connection is made the way a restarted server or a dropped link makes one: its backend is
terminated from another session while it sits in the pool, so the client does not know."""

import threading
import time

import psycopg
import pytest
from django.db import connections

from config.db.backend.base import _CHECKED_IN_AT, RECENTLY_CHECKED_SECONDS, DatabaseWrapper
from config.db.rls import pool_connection_reset

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pooled():
    """A Django connection of the app role through a pool of one. Checked out with the pool's
    getconn() as Django's connect() does; not registered in `connections`, so connect() itself
    (its connection_created receivers look the alias up) is not used."""
    settings = connections["default"].settings_dict

    def reset(connection):  # the app's check-in reset, noting the thread it ran on
        pool_connection_reset(connection)
        reset_threads.append(threading.get_ident())

    reset_threads = []
    options = {**settings["OPTIONS"], "pool": {"min_size": 1, "max_size": 1, "reset": reset}}
    wrapper = DatabaseWrapper({**settings, "OPTIONS": options, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": True}, alias="pool_check_test")
    wrapper.pool.open(wait=True)
    wrapper.reset_threads = reset_threads
    yield wrapper
    wrapper.close()
    wrapper.close_pool()


def _backend_pid(wrapper) -> int:
    if wrapper.connection is None:
        wrapper.connection = wrapper.pool.getconn()
    return wrapper.connection.info.backend_pid


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


def _checked_in_dead(wrapper, *, idle_seconds: float) -> int:
    pid = _backend_pid(wrapper)
    connection = wrapper.connection
    wrapper.close()  # back to the pool, as Django gives it back: reset and stamped
    setattr(connection, _CHECKED_IN_AT, getattr(connection, _CHECKED_IN_AT) - idle_seconds)
    _terminate(pid)
    return pid


def test_a_connection_goes_back_to_the_pool_without_its_session_state(pooled):
    pid = _backend_pid(pooled)
    pooled.connection.execute(
        "SELECT set_config('app.user_id', %s, false)", ["00000000-0000-0000-0000-000000000001"]
    )  # a session-level leak
    pooled.close()
    # Reset on this thread before close() returned, not on a pool worker woken for it.
    assert pooled.reset_threads == [threading.get_ident()]
    assert _backend_pid(pooled) == pid  # the same connection, from the pool
    assert pooled.connection.execute("SELECT current_setting('app.user_id', true)").fetchone() == ("",)


def test_a_connection_checked_in_moments_ago_is_handed_out_without_a_ping(pooled):
    pid = _checked_in_dead(pooled, idle_seconds=0)
    # Not pinged: the dead connection comes back as it is, and its next statement fails.
    assert _backend_pid(pooled) == pid
    with pytest.raises(psycopg.OperationalError):
        pooled.connection.execute("SELECT 1")
    pooled.close()  # broken: the pool discards it and opens another
    assert _backend_pid(pooled) != pid
    assert pooled.connection.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_idle_longer_is_pinged_and_a_dead_one_replaced(pooled):
    pid = _checked_in_dead(pooled, idle_seconds=RECENTLY_CHECKED_SECONDS + 1)
    assert _backend_pid(pooled) != pid
    assert pooled.connection.execute("SELECT 1").fetchone() == (1,)
