"""A statement as a transaction of its own, sent with its BEGIN, context, COMMIT and the pool's
reset in one round trip (config/db/backend DatabaseWrapper.run_alone, rls.statement_alone): the
metered send's finish. It commits or rolls back whole, answers the statement's rows, applies the
row-level security context, and leaves the connection as a COMMIT with the reset does."""

import threading
import uuid

import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import make_user
from chat.models import Conversation
from chat.services import conversation_create
from config.db import rls
from config.tests.test_pool_check import LEAKED, _backend_pid, _leaked, _terminate

pytestmark = pytest.mark.django_db(transaction=True)

ALICE = "00000000-0000-0000-0000-00000000a11c"
IDLE = psycopg.pq.TransactionStatus.IDLE


def _alone(wrapper, sql, params=None, user=ALICE):
    return wrapper.run_alone([f"SET LOCAL app.user_id = '{user}'"], sql, params)


def _table(wrapper) -> None:
    """A temporary table of this session (a pool of one hands the same session back)."""
    wrapper.connection.execute("CREATE TEMP TABLE IF NOT EXISTS noted (id int PRIMARY KEY, who text)")


def _count(wrapper) -> int:
    return wrapper.connection.execute("SELECT count(*) FROM noted").fetchone()[0]


def test_the_statement_is_committed_under_its_context_and_its_rows_answered(pooled):
    _backend_pid(pooled)
    _table(pooled)
    rows = _alone(pooled, "INSERT INTO noted VALUES (%(n)s, current_setting('app.user_id')) RETURNING id, who", {"n": 1})
    assert rows == [(1, ALICE)]
    assert pooled.connection.info.transaction_status == IDLE  # committed, not left open
    pooled.connection.execute("ROLLBACK")  # nothing to roll back
    assert _count(pooled) == 1
    assert pooled.connection.execute("SELECT current_setting('app.user_id', true)").fetchone() == ("",)  # local to it
    assert _alone(pooled, "UPDATE noted SET who = 'x' WHERE id = 2") == []  # no rows, no RETURNING


def test_it_resets_the_session_with_its_commit_and_the_check_in_then_sends_nothing(pooled):
    pid = _backend_pid(pooled)
    pooled.connection.execute("SELECT set_config('app.user_id', %s, false)", [LEAKED])  # a session-level leak
    assert _alone(pooled, "SELECT 1") == [(1,)]
    assert not _leaked(pooled)  # reset in the same round trip ...
    assert _alone(pooled, "SELECT 1") == [(1,)]
    pooled.close()
    assert pooled.reset_threads == []  # ... so the check-in had nothing to reset
    assert _backend_pid(pooled) == pid


def test_the_statement_is_prepared_once_per_connection_and_parameter_types(pooled):
    _backend_pid(pooled)
    sql = "SELECT %(v)s"
    answers = [_alone(pooled, sql, {"v": value}) for value in (1, 2, "three", 4, "five")]
    assert answers == [[(1,)], [(2,)], [("three",)], [(4,)], [("five",)]]
    prepared = pooled.connection.execute(
        "SELECT statement, parameter_types::text FROM pg_prepared_statements WHERE statement = 'SELECT $1' ORDER BY 2"
    ).fetchall()
    assert prepared == [("SELECT $1", "{smallint}"), ("SELECT $1", "{text}")]  # a small integer and a text, each once


def test_a_failing_statement_rolls_back_whole_raises_and_leaves_the_reset_to_the_check_in(pooled):
    _backend_pid(pooled)
    _table(pooled)
    _alone(pooled, "INSERT INTO noted VALUES (1, 'first')")
    pooled.connection.execute("SELECT set_config('app.user_id', %s, false)", [LEAKED])
    with pytest.raises(IntegrityError, match="noted_pkey"):
        _alone(pooled, "WITH more AS (INSERT INTO noted VALUES (2, 'second')) INSERT INTO noted VALUES (1, 'again')")
    assert pooled.connection.info.transaction_status == IDLE
    assert _count(pooled) == 1  # the other row of the statement went with it
    assert _alone(pooled, "INSERT INTO noted VALUES (3, 'third') RETURNING id") == [(3,)]  # the connection is fine
    pooled.connection.execute("SELECT set_config('app.user_id', %s, false)", [LEAKED])
    with pytest.raises(DatabaseError):
        _alone(pooled, "SELECT 1 / %(zero)s", {"zero": 0})
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]  # the failed pipeline reset nothing
    _backend_pid(pooled)
    assert not _leaked(pooled)


def test_a_commit_that_fails_raises_and_leaves_the_reset_to_the_check_in(pooled):
    _backend_pid(pooled)
    pooled.connection.execute("CREATE TEMP TABLE parent (id int PRIMARY KEY)")
    pooled.connection.execute("CREATE TEMP TABLE child (parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(IntegrityError, match="child"):
        _alone(pooled, "INSERT INTO child VALUES (1)")  # checked at COMMIT
    assert pooled.connection.info.transaction_status == IDLE
    assert pooled.connection.execute("SELECT count(*) FROM child").fetchone() == (0,)
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]


def test_a_reset_that_fails_after_its_commit_is_no_error_and_is_done_at_check_in(pooled, caplog):
    _backend_pid(pooled)
    _table(pooled)
    pooled.settings_dict["OPTIONS"]["pool"]["reset"].sql = "RESET ALL; SELECT 1 / 0"  # this fixture's own reset
    assert _alone(pooled, "INSERT INTO noted VALUES (1, 'kept') RETURNING id") == [(1,)]
    assert "the session reset sent with COMMIT failed" in caplog.text
    pooled.close()
    assert pooled.reset_threads == [threading.get_ident()]
    _backend_pid(pooled)
    assert _count(pooled) == 1


@pytest.mark.parametrize("inside", ["an atomic block", "autocommit off"])
def test_inside_a_transaction_it_declines_and_sends_nothing(pooled, inside):
    _backend_pid(pooled)
    connections[pooled.alias] = pooled
    try:
        with CaptureQueriesContext(pooled) as seen:
            if inside == "an atomic block":
                pooled.set_autocommit(True)  # as Django's connect() leaves it (the fixture checks out past it)
                with transaction.atomic(using=pooled.alias):
                    assert _alone(pooled, "SELECT 1") is None
            else:
                pooled.set_autocommit(False)
                assert _alone(pooled, "SELECT 1") is None
                pooled.set_autocommit(True)
    finally:
        del connections[pooled.alias]
    assert not [q for q in seen.captured_queries if "SELECT 1" in q["sql"]]


def test_a_connection_lost_mid_way_raises_and_is_not_reused(pooled):
    pid = _backend_pid(pooled)
    _terminate(pid)
    with pytest.raises(DatabaseError):
        _alone(pooled, "SELECT 1")
    assert pooled.connection.closed
    pooled.close()  # the pool discards it and opens another
    assert _backend_pid(pooled) != pid
    assert _alone(pooled, "SELECT 1") == [(1,)]


def test_it_is_in_djangos_query_log(pooled):
    _backend_pid(pooled)
    with CaptureQueriesContext(pooled) as seen:
        _alone(pooled, "SELECT %(v)s + 1", {"v": 1})
    assert [q["sql"] for q in seen.captured_queries] == ["SELECT %(v)s + 1"]


def test_on_the_app_role_another_users_row_is_neither_read_nor_written():
    """rls.statement_alone on the web role's own connection: the policies see the context it sends."""
    alice, bob = make_user(), make_user()
    conversation = conversation_create(user=alice, title="Alice's")
    sql = "UPDATE chat_conversation SET title = %(title)s WHERE id = %(id)s RETURNING title"
    assert rls.statement_alone(bob.pk, sql, {"title": "Bob was here", "id": conversation.pk}) == []
    assert rls.statement_alone(None, sql, {"title": "Nobody was here", "id": conversation.pk}) == []
    assert rls.statement_alone(alice.pk, sql, {"title": "Renamed", "id": conversation.pk}) == [("Renamed",)]
    with rls.privileged(reason="test: read the title back"):
        assert Conversation.objects.get(pk=conversation.pk).title == "Renamed"
    assert rls.statement_alone("not a uuid", sql, {"title": "x", "id": conversation.pk}) is None  # declined, not sent
    assert rls.statement_alone(uuid.uuid4(), "SELECT count(*) FROM chat_conversation", None) == [(0,)]


def test_an_error_while_reading_the_answers_closes_the_connection_rather_than_hand_it_on(pooled, monkeypatch):
    """Left mid-pipeline (answers unread, pipeline mode on), a connection would fail its next user."""
    pid = _backend_pid(pooled)
    fetch_many, calls = psycopg.generators.fetch_many, []

    def interrupted(pgconn):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted while reading")
        return fetch_many(pgconn)

    monkeypatch.setattr(psycopg.generators, "fetch_many", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        _alone(pooled, "SELECT 1")
    monkeypatch.undo()
    assert pooled.connection.closed
    pooled.close()
    assert _backend_pid(pooled) != pid
    assert _alone(pooled, "SELECT 1") == [(1,)]


def test_a_statement_a_schema_change_made_stale_is_prepared_afresh(pooled):
    _backend_pid(pooled)
    _table(pooled)
    _alone(pooled, "INSERT INTO noted VALUES (1, 'one')")
    assert _alone(pooled, "SELECT * FROM noted") == [(1, "one")]
    pooled.connection.execute("ALTER TABLE noted ADD COLUMN extra int")  # psycopg sees it and deallocates all
    assert _alone(pooled, "SELECT * FROM noted") == [(1, "one", None)]
    pooled.connection.pgconn.exec_(b"ALTER TABLE noted ADD COLUMN more int")  # unseen by psycopg
    with pytest.raises(DatabaseError, match="cached plan must not change result type"):
        _alone(pooled, "SELECT * FROM noted")
    assert _alone(pooled, "SELECT * FROM noted") == [(1, "one", None, None)]  # not failing for good


def test_its_statements_survive_what_psycopg_deallocates_after_a_rollback(pooled):
    """psycopg sends DEALLOCATE ALL after a ROLLBACK on a connection with statements it prepared;
    a statement this backend prepared in its own names went too, and the next metered send's
    finish on that connection failed with 'prepared statement ... does not exist' (a 500)."""
    _backend_pid(pooled)
    assert _alone(pooled, "SELECT %(v)s::int", {"v": 1}) == [(1,)]
    pooled.connection.execute("SELECT %s::int + 1", [1], prepare=True)  # one of psycopg's own
    pooled.connection.execute("BEGIN")
    pooled.connection.rollback()
    assert pooled.connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    assert _alone(pooled, "SELECT %(v)s::int", {"v": 2}) == [(2,)]


def test_the_round_trip_is_one_wait_for_all_its_results(pooled, monkeypatch):
    """BEGIN, the context, the statement, COMMIT and the reset: five results read in one wait()
    (one a result cost about 10 us of CPU each on the send's hot path)."""
    _backend_pid(pooled)
    _table(pooled)
    raw = pooled.connection
    waits = []
    real_wait = type(raw).wait
    monkeypatch.setattr(type(raw), "wait", lambda self, *args, **kwargs: waits.append(1) or real_wait(self, *args, **kwargs))
    assert _alone(pooled, "INSERT INTO noted VALUES (%(n)s, 'x') RETURNING id", {"n": 7}) == [(7,)]
    assert len(waits) == 1
    waits.clear()
    with pytest.raises(IntegrityError):  # a failed statement: the results after it read in the same wait
        _alone(pooled, "INSERT INTO noted VALUES (%(n)s, 'y')", {"n": 7})
    assert len(waits) == 2  # the round trip, then the ROLLBACK of its failed transaction
    assert raw.info.transaction_status == IDLE and _count(pooled) == 1
