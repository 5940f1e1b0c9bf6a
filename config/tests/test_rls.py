"""Row-level security, proved on raw SQL as the app role and through requests and Celery."""

import psycopg
import pytest
from celery import shared_task
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import path
from psycopg.pq import TransactionStatus

from accounts.models import Membership, Organization, User
from accounts.tests.factories import PASSWORD, make_user
from config.db import rls
from config.db.rls import ContextError

pytestmark = pytest.mark.django_db(transaction=True)


def _set(cur, user_id="", org_ids=""):
    cur.execute("SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(user_id), org_ids])


@pytest.fixture
def two_users():
    return make_user(email="alice@example.com"), make_user(email="bob@example.com")


def test_raw_sql_user_sees_exactly_their_rows(raw_app_connection, two_users):
    alice, bob = two_users
    alice_org = Membership.objects.using("privileged").get(user=alice).organization_id
    with raw_app_connection.cursor() as cur:
        _set(cur, alice.pk, str(alice_org))
        cur.execute("SELECT id FROM accounts_user")
        assert [r[0] for r in cur.fetchall()] == [alice.pk]
        cur.execute("SELECT organization_id, user_id FROM accounts_membership")
        assert cur.fetchall() == [(alice_org, alice.pk)]
        cur.execute("SELECT id FROM accounts_organization")
        assert cur.fetchall() == [(alice_org,)]
    raw_app_connection.rollback()


def test_raw_sql_without_context_sees_nothing(raw_app_connection, two_users):
    with raw_app_connection.cursor() as cur:
        for table in ("accounts_user", "accounts_organization", "accounts_membership"):
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == 0, table
    raw_app_connection.rollback()
    # The rows are there: the worker role sees them.
    assert User.objects.using("privileged").count() == 2


def test_raw_sql_cannot_write_another_users_rows(raw_app_connection, two_users):
    alice, bob = two_users
    bob_org = Membership.objects.using("privileged").get(user=bob).organization_id
    with raw_app_connection.cursor() as cur:
        _set(cur, alice.pk)
        # Updating Bob's row touches nothing: it is not visible.
        cur.execute("UPDATE accounts_user SET display_name = 'pwned' WHERE id = %s", [bob.pk])
        assert cur.rowcount == 0
        # Moving her own row to Bob's id is refused by WITH CHECK.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            cur.execute("UPDATE accounts_user SET id = %s WHERE id = %s", [bob.pk, alice.pk])
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        _set(cur, alice.pk)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            cur.execute(
                "INSERT INTO accounts_membership (id, organization_id, user_id, role, created_at) VALUES (gen_random_uuid(), %s, %s, 'owner', now())",
                [bob_org, alice.pk],
            )
    raw_app_connection.rollback()
    assert User.objects.using("privileged").get(pk=bob.pk).display_name != "pwned"
    assert Membership.objects.using("privileged").filter(organization_id=bob_org).count() == 1


def test_raw_sql_context_ends_with_its_transaction(raw_app_connection, two_users):
    alice, _ = two_users
    with raw_app_connection.cursor() as cur:
        _set(cur, alice.pk)
        cur.execute("SELECT count(*) FROM accounts_user")
        assert cur.fetchone()[0] == 1
        raw_app_connection.commit()
        # Same connection, next transaction: the local setting is gone ('' not NULL).
        cur.execute("SELECT current_setting('app.user_id', true), count(*) FROM accounts_user")
        assert cur.fetchone() == ("", 0)
    raw_app_connection.rollback()


def test_context_needs_a_transaction():
    with pytest.raises(ContextError):
        rls.context_set(user_id="00000000-0000-0000-0000-000000000001")


def test_connections_are_reset_on_check_in(two_users):
    alice, _ = two_users
    conn = connections["default"]
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, false)", [str(alice.pk)])  # a session-level leak
        cur.execute("SELECT count(*) FROM accounts_user")
        assert cur.fetchone()[0] == 1
    rls.connections_reset()
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('app.user_id', true), count(*) FROM accounts_user")
        assert cur.fetchone() == ("", 0)


def test_login_uses_the_narrow_lookup_and_sees_only_self(client, two_users):
    response = client.post("/accounts/login/", {"username": "ALICE@example.com", "password": PASSWORD})
    assert response.status_code == 302, response.content[:500]
    assert client.get("/api/v1/me").json()["email"] == "alice@example.com"
    bad = client.post("/accounts/login/", {"username": "bob@example.com", "password": "wrong password"})
    assert bad.status_code == 200  # the form again, with an error


# --- Unfiltered querysets inside views -----------------------------------------


def everything_view(request):
    """Deliberately forgets to filter: row-level security must still hold."""
    from django.http import JsonResponse

    return JsonResponse({"users": sorted(u.email for u in User.objects.all()), "organizations": Organization.objects.count()})


def streaming_view(request):
    def body():
        yield ",".join(sorted(u.email for u in User.objects.all()))

    return StreamingHttpResponse(body())


urlpatterns = [path("everything/", everything_view), path("stream/", streaming_view)]


@pytest.mark.urls("config.tests.test_rls")
def test_unfiltered_queryset_in_a_session_page_returns_only_the_callers_rows(client, two_users):
    alice, _ = two_users
    client.force_login(alice)
    body = client.get("/everything/").json()
    assert body == {"users": ["alice@example.com"], "organizations": 1}
    client.logout()
    assert client.get("/everything/").json() == {"users": [], "organizations": 0}


@pytest.mark.urls("config.tests.test_rls")
def test_streaming_response_sets_its_own_context(client, two_users):
    alice, _ = two_users
    client.force_login(alice)
    response = client.get("/stream/")
    assert b"".join(response.streaming_content) == b"alice@example.com"


# --- Celery: privileged only when asked ----------------------------------------


@shared_task
def count_users_task(privileged: bool) -> int:
    if privileged:
        with rls.privileged(reason="test: aggregate across users"):
            return User.objects.count()
    return User.objects.count()


def test_celery_task_sees_all_rows_only_inside_privileged(celery_worker, two_users):
    assert count_users_task.delay(False).get(timeout=30) == 0
    assert count_users_task.delay(True).get(timeout=30) == 2


def test_privileged_requires_a_reason():
    with pytest.raises(ValueError):
        with rls.privileged(reason=" "):
            pass


def test_object_read_privileged_is_written_as_the_app_role_afterwards(two_users):
    alice, _ = two_users
    with rls.privileged(reason="test: load"):
        loaded = User.objects.get(pk=alice.pk)
    loaded.display_name = "changed outside"
    with pytest.raises(DatabaseError, match="did not affect any rows"), transaction.atomic():
        loaded.save(update_fields=["display_name"])  # no context: the app role cannot see the row
    assert User.objects.using("privileged").get(pk=alice.pk).display_name != "changed outside"


# --- rls_audit -----------------------------------------------------------------


def test_rls_audit_passes_on_the_real_schema():
    call_command("rls_audit")


def test_rls_audit_fails_on_a_table_without_policy():
    with connections["owner"].cursor() as cur:
        cur.execute("CREATE TABLE audit_probe (id bigint PRIMARY KEY, user_id uuid)")
    try:
        with pytest.raises(CommandError, match="problem"):
            call_command("rls_audit")
    finally:
        with connections["owner"].cursor() as cur:
            cur.execute("DROP TABLE audit_probe")


def test_rls_audit_fails_when_the_app_role_has_a_grant_on_a_partition():
    with connections["owner"].cursor() as cur:
        cur.execute("CREATE TABLE audit_parted (id bigint, user_id uuid, created_at timestamptz) PARTITION BY RANGE (created_at)")
        cur.execute("ALTER TABLE audit_parted ENABLE ROW LEVEL SECURITY")
        cur.execute("ALTER TABLE audit_parted FORCE ROW LEVEL SECURITY")
        cur.execute(
            "CREATE POLICY audit_parted_owner ON audit_parted USING (user_id = NULLIF(current_setting('app.user_id', true), '')::uuid)"
        )
        cur.execute("CREATE TABLE audit_parted_p1 PARTITION OF audit_parted FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')")
        cur.execute("REVOKE ALL ON audit_parted_p1 FROM confab_app")
    try:
        call_command("rls_audit")
        with connections["owner"].cursor() as cur:
            cur.execute("GRANT SELECT ON audit_parted_p1 TO confab_app")
        with pytest.raises(CommandError):
            call_command("rls_audit")
    finally:
        with connections["owner"].cursor() as cur:
            cur.execute("DROP TABLE audit_parted")


def test_the_context_goes_with_begin_in_one_round_trip_and_hides_other_users_rows(two_users):
    alice, bob = two_users
    connection = connections["default"]
    with CaptureQueriesContext(connection) as captured, rls.atomic_as(alice.pk):
        # Nothing else ran in this transaction: BEGIN and the context went together.
        assert connection.connection.pgconn.transaction_status == TransactionStatus.INTRANS
        assert list(User.objects.values_list("pk", flat=True)) == [alice.pk]
    # Django logs the BEGIN it asked for; the context sent with it is logged with its value inline.
    assert [q["sql"] for q in captured.captured_queries[:2]] == ["BEGIN", f"SET LOCAL app.user_id = '{alice.pk}'"]
    with rls.atomic_as(bob.pk):  # the next transaction on the same connection: Bob's context only
        assert list(User.objects.values_list("pk", flat=True)) == [bob.pk]
    with transaction.atomic(using="default"):
        assert not User.objects.exists()  # and none after it: the context ended with its transaction


def test_a_context_set_after_the_transaction_began_is_bound_as_a_parameter(two_users):
    alice, bob = two_users
    connection = connections["default"]
    with CaptureQueriesContext(connection) as captured, rls.atomic_as(alice.pk):
        rls.context_set(user_id=bob.pk)  # as API-key authentication does inside a request's transaction
        assert list(User.objects.values_list("pk", flat=True)) == [bob.pk]
    assert [q["sql"] for q in captured.captured_queries[1:3]] == [
        f"SET LOCAL app.user_id = '{alice.pk}'",  # with BEGIN
        "SELECT set_config('app.user_id', $1, true)",  # bound: the transaction had begun
    ]
    with CaptureQueriesContext(connection) as captured, transaction.atomic(using="default"):
        rls.context_set(user_id="'); RESET ALL; --")  # not a UUID: never spliced into the SQL
        with pytest.raises(DatabaseError):
            User.objects.exists()  # the policies cannot read it as a user id
    assert [q["sql"] for q in captured.captured_queries[:2]] == ["BEGIN", "SELECT set_config('app.user_id', $1, true)"]
