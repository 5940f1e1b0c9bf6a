"""The hot path's prepared statements (config/db/rows.prepared_cursor): prepared once per
connection, and still under row-level security once PostgreSQL has cached a generic plan."""

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import make_user
from config.db import rls
from config.db.rows import fetch_one_prepared

pytestmark = pytest.mark.django_db(transaction=True)  # the users are written on the worker role's connection

# RLS on accounts_user: a user sees only their own row.
_USER_SQL = "SELECT id FROM accounts_user WHERE id = %s"
# After five custom plans PostgreSQL may switch to a generic plan; run past that.
_PAST_CUSTOM_PLANS = 8


def _prepared(sql_start: str) -> list[tuple[int, int]]:
    """(generic_plans, custom_plans) of this session's prepared statements starting with sql_start."""
    with connections["default"].cursor() as cur:
        cur.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s", [sql_start + "%"])
        return cur.fetchall()


def test_a_hot_statement_is_prepared_once_per_connection_and_its_plan_reused():
    alice = make_user()
    for _ in range(_PAST_CUSTOM_PLANS):
        with rls.atomic_as(alice.pk):
            assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) == (alice.pk,)
    [(generic, custom)] = _prepared("SELECT id FROM accounts_user WHERE id = $1")
    assert generic + custom == _PAST_CUSTOM_PLANS
    assert generic >= 1, "PostgreSQL kept planning the statement on every execution"


def test_a_prepared_statement_with_a_cached_plan_still_hides_another_users_rows():
    alice, bob = make_user(), make_user()
    for _ in range(_PAST_CUSTOM_PLANS):
        with rls.atomic_as(alice.pk):
            assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) == (alice.pk,)
    [(generic, _)] = _prepared("SELECT id FROM accounts_user WHERE id = $1")
    assert generic >= 1
    # The same prepared statement, the same parameters, another user's context: no row.
    with rls.atomic_as(bob.pk):
        assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) is None
        assert fetch_one_prepared("default", _USER_SQL, [bob.pk]) == (bob.pk,)
    with rls.atomic_as(None):
        assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) is None


def test_with_prepared_statements_off_nothing_is_prepared(monkeypatch):
    """DATABASE_PREPARED_STATEMENTS=false (a pooler in transaction mode): psycopg's threshold is None."""
    alice = make_user()
    connection = connections["default"]
    connection.ensure_connection()
    monkeypatch.setattr(connection.connection, "prepare_threshold", None)
    for _ in range(3):
        with rls.atomic_as(alice.pk):
            assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) == (alice.pk,)
    assert _prepared("SELECT id FROM accounts_user WHERE id = $1") == []


def test_after_a_rolled_back_transaction_the_statement_is_prepared_again():
    """psycopg forgets a connection's prepared statements at any rollback (a refused send rolls
    back) and deallocates them on the server; the next use prepares the statement again."""
    alice = make_user()
    with rls.atomic_as(alice.pk):
        assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) == (alice.pk,)
    assert len(_prepared("SELECT id FROM accounts_user WHERE id = $1")) == 1
    with pytest.raises(RuntimeError), rls.atomic_as(alice.pk):
        fetch_one_prepared("default", _USER_SQL, [alice.pk])
        raise RuntimeError("refused")  # as a refusal does: the transaction rolls back
    with rls.atomic_as(alice.pk):
        assert fetch_one_prepared("default", _USER_SQL, [alice.pk]) == (alice.pk,)
    [(generic, custom)] = _prepared("SELECT id FROM accounts_user WHERE id = $1")
    assert generic + custom == 1  # prepared anew after the rollback: one execution since


def test_djangos_query_log_shows_a_prepared_statement():
    """DEBUG's query log, CaptureQueriesContext and the debug toolbar read what the cursor ran."""
    alice = make_user()
    with CaptureQueriesContext(connections["default"]) as log:
        for _ in range(2):  # prepared at the first, executed by name at the second
            with rls.atomic_as(alice.pk):
                fetch_one_prepared("default", _USER_SQL, [alice.pk])
    statements = [query["sql"] for query in log.captured_queries]
    assert statements.count("SELECT id FROM accounts_user WHERE id = $1") == 2, statements
