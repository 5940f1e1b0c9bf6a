"""The pool (config/db/backend): a connection goes back with no session state, reset at check-in
or with its last COMMIT if nothing ran after it; one reset moments ago is handed out without
another round trip unless the server has sent it something (its end); one idle longer is pinged
and, if dead, replaced.

A dead connection is made the way a restarted server or a dropped link makes one: its backend is
terminated from another session while it sits in the pool, so the client does not know."""

import threading
import time

import psycopg
import pytest
from django.db import IntegrityError, connections

from config.db import rls
from config.db.backend.base import _CHECKED_IN_AT, RECENTLY_CHECKED_SECONDS
from config.db.rows import fetch_one_prepared

pytestmark = pytest.mark.django_db(transaction=True)


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


def _last_statement(pid: int) -> str:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
        return cur.fetchone()[0]


def test_a_connection_checked_in_moments_ago_is_handed_out_without_a_ping(pooled):
    pid = _backend_pid(pooled)
    pooled.close()
    assert _backend_pid(pooled) == pid
    assert _last_statement(pid) == "RESET ALL"  # the check-in's reset; a ping would show as an empty query


def test_a_connection_checked_in_moments_ago_and_ended_since_is_replaced(pooled):
    """Its socket has the server's goodbye to read: seen without a round trip, so the check runs.
    Was: handed out as it was, its next statement failed (a send's finish, after the provider was paid)."""
    pid = _checked_in_dead(pooled, idle_seconds=0)
    assert _backend_pid(pooled) != pid
    assert pooled.connection.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_idle_longer_is_pinged_and_a_dead_one_replaced(pooled):
    pid = _checked_in_dead(pooled, idle_seconds=RECENTLY_CHECKED_SECONDS + 1)
    assert _backend_pid(pooled) != pid
    assert pooled.connection.execute("SELECT 1").fetchone() == (1,)


LEAKED = "00000000-0000-0000-0000-000000000001"
_LEAK_SQL = "SELECT set_config('app.user_id', %s, false)"  # a session-level setting, as a leak would be


def _leaked(wrapper) -> bool:
    return wrapper.connection.execute("SELECT current_setting('app.user_id', true)").fetchone() == (LEAKED,)


def _committed(wrapper, sql: str, params=()) -> None:
    """`sql` in a transaction committed as an atomic block's exit commits it (Django's commit())."""
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cur:
        cur.execute(sql, params)
    wrapper.commit()
    wrapper.set_autocommit(True)


def test_a_commit_resets_the_session_and_the_check_in_that_follows_sends_nothing(pooled):
    pid = _backend_pid(pooled)
    _committed(pooled, _LEAK_SQL, [LEAKED])
    assert not _leaked(pooled)  # gone with the COMMIT, in its round trip ...
    _committed(pooled, _LEAK_SQL, [LEAKED])
    pooled.close()
    assert pooled.reset_threads == []  # ... so the check-in has nothing to reset
    assert _backend_pid(pooled) == pid
    assert not _leaked(pooled)


@pytest.mark.parametrize("through", ["Django's cursor", "a cursor made before the commit", "a prepared cursor", "psycopg directly"])
def test_a_statement_after_the_commit_brings_the_check_in_reset_back(pooled, through):
    _backend_pid(pooled)
    earlier = pooled.cursor()
    _committed(pooled, "SELECT 1")
    if through == "a cursor made before the commit":
        earlier.execute(_LEAK_SQL, [LEAKED])
    elif through == "Django's cursor":
        with pooled.cursor() as cur:
            cur.execute(_LEAK_SQL, [LEAKED])  # in autocommit, after the commit that reset the session
    elif through == "a prepared cursor":  # config.db.rows builds its cursor past psycopg's cursor()
        connections[pooled.alias] = pooled
        try:
            fetch_one_prepared(pooled.alias, _LEAK_SQL, [LEAKED])
        finally:
            del connections[pooled.alias]
    else:
        pooled.connection.execute(_LEAK_SQL, [LEAKED])
    earlier.close()
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]
    _backend_pid(pooled)
    assert not _leaked(pooled)


def test_a_commit_that_fails_raises_and_leaves_the_reset_to_the_check_in(pooled):
    _backend_pid(pooled)
    with pooled.cursor() as cur:
        cur.execute("CREATE TEMP TABLE parent (id int PRIMARY KEY)")
        cur.execute("CREATE TEMP TABLE child (parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)")
    pooled.set_autocommit(False)
    with pooled.cursor() as cur:
        cur.execute(_LEAK_SQL, [LEAKED])
        cur.execute("INSERT INTO child VALUES (1)")  # checked at COMMIT
    with pytest.raises(IntegrityError, match="child"):
        pooled.commit()
    pooled.set_autocommit(True)
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]
    _backend_pid(pooled)  # the same session (a pool of one): its temporary tables are still there
    assert pooled.connection.execute("SELECT count(*) FROM child").fetchone() == (0,)  # rolled back, the connection usable


def test_a_connection_given_back_mid_transaction_is_rolled_back_and_reset(pooled):
    _backend_pid(pooled)
    _committed(pooled, "SELECT 1")
    pooled.set_autocommit(False)
    assert rls._begun_with_context(pooled, LEAKED)  # BEGIN sent past any cursor
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]
    _backend_pid(pooled)
    assert pooled.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_reset_that_fails_after_its_commit_is_no_error_and_is_done_at_check_in(pooled, caplog):
    """The COMMIT's own result decides: a reset that fails after it (here a reset string that
    ends in an error) leaves the transaction committed, the caller told so, the check-in to reset."""
    _backend_pid(pooled)
    with pooled.cursor() as cur:
        cur.execute("CREATE TEMP TABLE kept (id int)")
    pooled.settings_dict["OPTIONS"]["pool"]["reset"].sql = "RESET ALL; SELECT 1 / 0"  # this fixture's own reset
    pooled.set_autocommit(False)
    with pooled.cursor() as cur:
        cur.execute(_LEAK_SQL, [LEAKED])
        cur.execute("INSERT INTO kept VALUES (1)")
    pooled.commit()  # no error: it committed
    pooled.set_autocommit(True)
    assert "the session reset sent with COMMIT failed" in caplog.text
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]
    _backend_pid(pooled)
    assert pooled.connection.execute("SELECT count(*) FROM kept").fetchone() == (1,)
    assert not _leaked(pooled)
