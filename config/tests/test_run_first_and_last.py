"""A transaction's first statement sent with its BEGIN and context, and its last with its COMMIT
and the pool's reset, each in one round trip (config/db/backend run_first and run_last,
rls.first_statement_as, insert_rows `last`): the metered send's prepare. What they send must be
what the atomic block would have done statement by statement: the context applied, one
transaction, committed or rolled back whole."""

import threading
import uuid

import psycopg
import pytest
from django.db import IntegrityError, connections, transaction
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import make_user
from chat.models import Conversation
from chat.services import conversation_create
from config.db import rls
from config.tests.test_pool_check import _backend_pid

pytestmark = pytest.mark.django_db(transaction=True)

ALICE = "00000000-0000-0000-0000-00000000a11c"
CONTEXT = f"SET LOCAL app.user_id = '{ALICE}'"
IDLE, INTRANS = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS


@pytest.fixture
def registered(pooled):
    """The pooled connection as an alias Django's atomic blocks can use."""
    _backend_pid(pooled)
    pooled.set_autocommit(True)
    pooled.connection.execute("CREATE TEMP TABLE IF NOT EXISTS noted (id int PRIMARY KEY, who text)")
    connections[pooled.alias] = pooled
    yield pooled
    del connections[pooled.alias]


def _count(wrapper) -> int:
    return wrapper.connection.execute("SELECT count(*) FROM noted").fetchone()[0]


def test_the_first_statement_goes_with_begin_and_its_context_and_the_block_goes_on(registered):
    with transaction.atomic(using=registered.alias):
        rows = registered.run_first([CONTEXT], "INSERT INTO noted VALUES (%(n)s, current_setting('app.user_id')) RETURNING who", {"n": 1})
        assert rows == [(ALICE,)]
        assert registered.connection.info.transaction_status == INTRANS  # begun, not committed
        with registered.cursor() as cur:  # the same transaction, its context still set
            cur.execute("INSERT INTO noted VALUES (2, current_setting('app.user_id'))")
        assert registered.run_first([CONTEXT], "SELECT 1", None) is None  # begun: declined
    assert registered.connection.execute("SELECT id, who FROM noted ORDER BY id").fetchall() == [(1, ALICE), (2, ALICE)]


def test_a_failing_first_statement_raises_and_the_block_rolls_back(registered):
    with pytest.raises(IntegrityError):
        with transaction.atomic(using=registered.alias):
            registered.run_first([CONTEXT], "INSERT INTO noted VALUES (1, 'a'), (1, 'again')", None)
    assert registered.connection.info.transaction_status == IDLE
    assert _count(registered) == 0
    with transaction.atomic(using=registered.alias):  # the connection is fine
        assert registered.run_first([CONTEXT], "INSERT INTO noted VALUES (1, 'b') RETURNING id", None) == [(1,)]
    assert _count(registered) == 1


def test_the_last_statement_goes_with_commit_and_the_reset_and_the_block_sends_nothing_more(registered):
    with CaptureQueriesContext(registered) as seen:
        with transaction.atomic(using=registered.alias):
            registered.run_first([CONTEXT], "INSERT INTO noted VALUES (1, current_setting('app.user_id'))", None)
            assert registered.run_last("INSERT INTO noted VALUES (%(n)s, 'last') RETURNING id", {"n": 2}) == [(2,)]
            assert registered.connection.info.transaction_status == IDLE  # committed with it
    assert [q["sql"] for q in seen.captured_queries if q["sql"] not in ("BEGIN",)][
        -1
    ] == "INSERT INTO noted VALUES (%(n)s, 'last') RETURNING id"
    registered.close()
    assert registered.reset_threads == []  # reset with the COMMIT: the check-in had nothing to do
    _backend_pid(registered)
    assert _count(registered) == 2


def test_a_last_statement_that_fails_rolls_the_whole_block_back(registered):
    with pytest.raises(IntegrityError):
        with transaction.atomic(using=registered.alias):
            registered.run_first([CONTEXT], "INSERT INTO noted VALUES (1, 'first')", None)
            registered.run_last("INSERT INTO noted VALUES (1, 'clash')", None)
    assert registered.connection.info.transaction_status == IDLE
    assert _count(registered) == 0


def test_a_commit_that_fails_with_the_last_statement_raises_and_keeps_nothing(registered):
    registered.connection.execute("CREATE TEMP TABLE parent (id int PRIMARY KEY)")
    registered.connection.execute("CREATE TEMP TABLE child (parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(IntegrityError, match="child"):
        with transaction.atomic(using=registered.alias):
            registered.run_first([CONTEXT], "INSERT INTO noted VALUES (1, 'first')", None)
            registered.run_last("INSERT INTO child VALUES (1)", None)  # checked at COMMIT
    assert _count(registered) == 0
    assert registered.connection.execute("SELECT count(*) FROM child").fetchone() == (0,)


def test_the_last_statement_declines_inside_a_savepoint_and_before_the_transaction_began(registered):
    with transaction.atomic(using=registered.alias):
        assert registered.run_last("INSERT INTO noted VALUES (9, 'early')", None) is None  # nothing begun
        registered.run_first([CONTEXT], "INSERT INTO noted VALUES (1, 'first')", None)
        with transaction.atomic(using=registered.alias):
            assert registered.run_last("INSERT INTO noted VALUES (2, 'nested')", None) is None
        assert registered.connection.info.transaction_status == INTRANS
    assert _count(registered) == 1


def test_first_statement_as_applies_the_context_and_asynchronous_commit_to_its_transaction_only():
    alice = make_user()
    conversation = conversation_create(user=alice, title="Alice's")
    sql = "SELECT title, current_setting('synchronous_commit') FROM chat_conversation WHERE id = %s"
    with rls.atomic():
        assert rls.first_statement_as(alice.pk, sql, [conversation.pk], asynchronous_commit=True) == [("Alice's", "off")]
    with rls.atomic():
        assert rls.first_statement_as(alice.pk, sql, [conversation.pk]) == [("Alice's", "on")]
    with rls.atomic():  # another user's row: not seen
        assert rls.first_statement_as(uuid.uuid4(), sql, [conversation.pk]) == []


def test_first_statement_as_without_prepared_statements_sets_the_context_then_runs_it():
    """A pooler in transaction mode (DATABASE_PREPARED_STATEMENTS off): run_first declines."""
    alice = make_user()
    conversation = conversation_create(user=alice, title="Alice's")
    connection = connections["default"]
    connection.ensure_connection()
    connection.connection.prepare_threshold = None
    try:
        with rls.atomic():
            sql = "SELECT title, current_setting('synchronous_commit') FROM chat_conversation WHERE id = %s"
            assert rls.first_statement_as(alice.pk, sql, [conversation.pk], asynchronous_commit=True) == [("Alice's", "off")]
    finally:
        connection.close()


def test_on_the_app_role_the_last_statement_cannot_write_another_users_row():
    alice, bob = make_user(), make_user()
    conversation = conversation_create(user=alice, title="Alice's")
    sql = "UPDATE chat_conversation SET title = %s WHERE id = %s RETURNING title"
    with rls.atomic():
        rls.context_set(user_id=bob.pk)
        assert connections["default"].run_last(sql, ["Bob was here", conversation.pk]) == []
    with rls.privileged(reason="test: read the title back"):
        assert Conversation.objects.get(pk=conversation.pk).title == "Alice's"


def test_a_thread_cannot_use_anothers_connection(registered):
    errors = []

    def other():
        try:
            registered.run_first([CONTEXT], "SELECT 1", None)
        except Exception as exc:  # Django's thread-sharing check
            errors.append(type(exc).__name__)

    with transaction.atomic(using=registered.alias):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors == ["DatabaseError"]
