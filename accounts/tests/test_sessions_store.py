"""Sessions: unreadable to the web role except through the store, and still served when Redis is down."""

import hashlib
import tempfile
from importlib import import_module

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.core.cache import caches
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client
from django_redis import get_redis_connection

from accounts.session_store import CACHE_KEY_PREFIX
from accounts.tests.factories import PASSWORD, make_user
from accounts.tests.test_api import API, key_client
from config import embedded
from config.crypto import token_digest

pytestmark = pytest.mark.django_db(transaction=True)

# Public tables the app role can read, found in the catalog (not a fixed list: a new table is covered too).
READABLE_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND has_table_privilege(current_user, c.oid, 'SELECT')
"""


def _store(session_key=None):
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key)


def _sign_in(client, email):
    response = client.post("/accounts/login/", {"username": email, "password": PASSWORD})
    assert response.status_code == 302, response.content[:500]
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _set_context(cur, user_id=""):
    cur.execute("SELECT set_config('app.user_id', %s, true)", [str(user_id)])


def _tables_holding(cur, text):
    """Every table whose readable rows contain `text` anywhere (as the connection's role and context)."""
    cur.execute(READABLE_TABLES)
    found = []
    for (table,) in cur.fetchall():
        cur.execute(f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, %s) > 0', [text])
        if cur.fetchone()[0]:
            found.append(table)
    return found


def _owner_count(sql, params=()):
    with connections["owner"].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def test_app_role_without_context_reads_no_session_key(raw_app_connection):
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    admin = Client()
    response = admin.post("/admin/login/", {"username": staff.email, "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302, response.content[:500]
    assert admin.get("/admin/").status_code == 200
    key = admin.cookies[settings.SESSION_COOKIE_NAME].value
    with raw_app_connection.cursor() as cur:
        assert _tables_holding(cur, key) == []
        # The store's table: no grant at all, so not even its hashes or data are listed.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("SELECT * FROM accounts_session")
    raw_app_connection.rollback()


def test_app_role_with_one_users_context_reads_no_other_users_session(raw_app_connection):
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    _sign_in(Client(), alice.email)
    bob_key = _sign_in(Client(), bob.email)
    with raw_app_connection.cursor() as cur:
        _set_context(cur, alice.pk)
        assert _tables_holding(cur, bob_key) == []
        assert _tables_holding(cur, token_digest(bob_key)) == []
    raw_app_connection.rollback()


def test_session_table_stays_closed_to_the_app_role_even_if_granted(raw_app_connection):
    alice = make_user(email="alice@example.com")
    _sign_in(Client(), alice.email)
    assert _owner_count("SELECT count(*) FROM accounts_session") >= 1
    with connections["owner"].cursor() as cur:
        cur.execute(f"GRANT SELECT ON accounts_session TO {embedded.ROLE_APP}")
    try:
        with raw_app_connection.cursor() as cur:
            _set_context(cur, alice.pk)
            cur.execute("SELECT count(*) FROM accounts_session")
            assert cur.fetchone()[0] == 0  # forced row-level security and no policy: nothing
        raw_app_connection.rollback()
    finally:
        with connections["owner"].cursor() as cur:
            cur.execute(f"REVOKE ALL ON accounts_session FROM {embedded.ROLE_APP}")


def test_session_is_stored_under_its_hash_and_loads_through_the_store():
    alice = make_user(email="alice@example.com")
    key = _sign_in(Client(), alice.email)
    assert _owner_count("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(key)]) == 1
    assert _owner_count("SELECT count(*) FROM accounts_session s WHERE strpos(s::text, %s) > 0", [key]) == 0
    get_redis_connection("default").flushdb()  # from the database, not the cache
    assert _store(key).load()[SESSION_KEY] == str(alice.pk)
    # Redis names the session by its hash too.
    assert not [k for k in get_redis_connection("default").keys("*") if key.encode() in k]
    _store(key).load()
    assert [k for k in get_redis_connection("default").keys("*") if token_digest(key).encode() in k]


def test_revoking_deletes_the_session_row():
    alice = make_user(email="alice@example.com")
    laptop, phone = Client(), Client()
    _sign_in(laptop, alice.email)
    phone_key = _sign_in(phone, alice.email)
    from accounts.models import UserSession

    phone_session = UserSession.objects.using("privileged").get(user=alice, session_key_digest=token_digest(phone_key))
    assert laptop.post(f"/settings/sessions/{phone_session.pk}/revoke/").status_code == 302
    assert _owner_count("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(phone_key)]) == 0
    assert phone.get("/settings/profile/").status_code == 302


def test_signed_in_sessions_list_keeps_the_digest_of_the_key_not_the_key():
    alice = make_user(email="alice@example.com")
    key = _sign_in(Client(), alice.email)
    # As the owner (what a dump or the worker role would see): the key is nowhere in the table.
    assert _owner_count("SELECT count(*) FROM accounts_usersession u WHERE strpos(u::text, %s) > 0", [key]) == 0
    assert (
        _owner_count(
            "SELECT count(*) FROM accounts_usersession WHERE user_id = %s AND session_key_digest = %s", [alice.pk, token_digest(key)]
        )
        == 1
    )


def test_migration_hashes_keys_in_sql_as_token_digest_does():
    hashed = import_module("accounts.migrations.0012_usersession_key_digest").HASHED
    keys = ["a" * 32, "0123456789abcdefghijklmnopqrstuv", "clé-ünïcode-✓"]
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT {hashed} FROM unnest(%s::text[]) WITH ORDINALITY AS k(session_key, n) ORDER BY n", [keys])
        assert [row[0] for row in cur.fetchall()] == [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    assert [token_digest(k) for k in keys] == [hashlib.sha256(k.encode()).hexdigest() for k in keys]


def test_migration_back_and_forth_ends_sessions_and_hashes_existing_keys():
    """Reversing signs out the listed sessions (their keys cannot come back); going forward hashes what is there."""
    migration = import_module("accounts.migrations.0012_usersession_key_digest")
    alice = make_user(email="alice@example.com")
    key = _sign_in(Client(), alice.email)
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
        cur.execute(migration.DROP_FUNCTIONS + migration.DIGEST_UNDO)
        cur.execute("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(key)])
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT session_key, ended_at IS NOT NULL FROM accounts_usersession WHERE user_id = %s", [alice.pk])
        assert cur.fetchall() == [("", True)]
        cur.execute("UPDATE accounts_usersession SET session_key = %s", [key])
        cur.execute(migration.DIGEST + migration.FUNCTIONS)
        cur.execute("SELECT session_key_digest FROM accounts_usersession WHERE user_id = %s", [alice.pk])
        assert cur.fetchall() == [(token_digest(key),)]
        transaction.set_rollback(True, using="owner")


def test_app_role_cannot_delete_another_users_session_by_its_digest(raw_app_connection):
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    bob_client = Client()
    alice_key, bob_key = _sign_in(Client(), alice.email), _sign_in(bob_client, bob.email)
    with raw_app_connection.cursor() as cur:
        _set_context(cur, alice.pk)
        cur.execute("SELECT accounts_session_delete_digest(%s)", [token_digest(bob_key)])
        assert cur.fetchone()[0] is False
        _set_context(cur)  # nobody's context: nobody's session either
        cur.execute("SELECT accounts_session_delete_digest(%s)", [token_digest(bob_key)])
        assert cur.fetchone()[0] is False
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("SELECT accounts_session_delete_digest_staff(%s)", [token_digest(bob_key)])
    raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur:
        _set_context(cur, alice.pk)
        cur.execute("SELECT accounts_session_delete_digest(%s)", [token_digest(alice_key)])
        assert cur.fetchone()[0] is True  # her own: the function does delete
    raw_app_connection.commit()
    get_redis_connection("default").flushdb()
    assert _store(bob_key).load()[SESSION_KEY] == str(bob.pk)
    assert bob_client.get("/settings/profile/").status_code == 200
    assert _store(alice_key).load() == {}


def test_staff_revoke_in_admin_signs_the_browser_out():
    alice = make_user(email="alice@example.com")
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    phone = Client()
    phone_key = _sign_in(phone, alice.email)
    assert phone.get("/settings/profile/").status_code == 200  # now cached in Redis too
    admin = Client()
    assert admin.post("/admin/login/", {"username": staff.email, "password": PASSWORD, "next": "/admin/"}).status_code == 302
    from accounts.models import UserSession

    phone_session = UserSession.objects.using("privileged").get(user=alice, session_key_digest=token_digest(phone_key))
    response = admin.post(
        "/admin/accounts/usersession/", {"action": "revoke_sessions", "_selected_action": [str(phone_session.pk)]}, follow=True
    )
    assert "Revoked 1 session(s)" in response.content.decode()
    assert _owner_count("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(phone_key)]) == 0
    assert phone.get("/settings/profile/").status_code == 302


def test_clearsessions_removes_only_expired_sessions():
    live, expired = _store(), _store()
    live.create()
    expired.set_expiry(-60)
    expired.create()
    call_command("clearsessions")
    assert _owner_count("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(live.session_key)]) == 1
    assert _owner_count("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(expired.session_key)]) == 0
    assert _store(expired.session_key).load() == {}


def test_a_session_that_expired_is_not_listed_as_signed_in():
    """A browser's session runs out (its 14 days pass): that browser is signed out. The sessions
    list (API and settings page: "Browsers signed in to your account") still lists it as signed
    in, forever: only a sign-out, a revoke or a password reset ever ends a UserSession. It should
    list only sessions that still sign a browser in."""
    alice = make_user(email="alice@example.com")
    browser, other = Client(), Client()
    key = _sign_in(browser, alice.email)
    _sign_in(other, alice.email)
    digest = token_digest(key)
    with connections["owner"].cursor() as cur:  # its time runs out
        cur.execute("UPDATE accounts_session SET expire_date = now() - interval '1 day' WHERE key_hash = %s", [digest])
        assert cur.rowcount == 1
    caches[settings.SESSION_CACHE_ALIAS].delete(CACHE_KEY_PREFIX + digest)
    assert browser.get("/settings/profile/").status_code == 302, "the expired session still signs the browser in"

    listed = key_client(alice).get(f"{API}/sessions").json()["results"]
    assert len(listed) == 1, f"an expired session is listed as signed in: {listed}"
    page = other.get("/settings/sessions/")
    assert [s.session_key_digest for s in page.context["sessions"]] == [token_digest(other.cookies[settings.SESSION_COOKIE_NAME].value)]


def test_whoever_may_load_a_session_may_ask_whether_it_is_live_and_no_one_else():
    """accounts 0018 grants accounts_session_live to the roles that may execute accounts_session_load, read from its grants."""
    sql = "SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles WHERE NOT rolsuper AND has_function_privilege(oid, %s, 'EXECUTE')"
    with connections["owner"].cursor() as cur:
        cur.execute(sql, ["accounts_session_live(text)"])
        live = cur.fetchone()[0]
        cur.execute(sql, ["accounts_session_load(text)"])
        load = cur.fetchone()[0]
    assert live == load
    assert {settings.DATABASES[alias]["USER"] for alias in ("default", "privileged")} <= set(live)


def test_must_create_refuses_an_existing_key_and_update_refuses_a_deleted_one():
    from django.contrib.sessions.backends.base import CreateError, UpdateError

    store = _store()
    store["a"] = 1
    store.save()
    twin = _store(store.session_key)
    with pytest.raises(CreateError):
        twin.save(must_create=True)
    store.delete()
    with pytest.raises(UpdateError):
        twin.save()  # a revoked session is not written back by a request that was still running


def test_migration_moves_live_django_sessions_under_their_hash():
    move = import_module("accounts.migrations.0007_session_store_and_grants").SESSIONS_MOVE
    live_key, expired_key = "l" * 32, "e" * 32
    data = _store().encode({"carried": "over"})
    with connections["owner"].cursor() as cur:
        cur.execute(
            "INSERT INTO django_session VALUES (%s, %s, now() + interval '1 day'), (%s, %s, now() - interval '1 day')",
            [live_key, data, expired_key, data],
        )
        cur.execute(move)
    assert _store(live_key).load() == {"carried": "over"}
    assert _owner_count("SELECT count(*) FROM accounts_session WHERE key_hash = %s", [token_digest(expired_key)]) == 0
    assert _owner_count("SELECT count(*) FROM django_session") == 0  # the raw keys are gone


# --- Redis down ------------------------------------------------------------------------------------


def test_signed_in_pages_survive_redis_stopping_and_nothing_is_lost_when_it_returns(own_redis):
    alice = make_user(email="alice@example.com")
    client = Client()
    key = _sign_in(client, alice.email)
    assert client.get("/settings/profile/").status_code == 200

    embedded.redis_stop(own_redis)
    response = client.get("/settings/profile/")
    assert response.status_code == 200 and "alice@example.com" in response.content.decode()

    # Written while Redis is down: the database alone holds the change.
    during = _store(key)
    during["note"] = "written during the outage"
    during.save()

    embedded.redis_start(own_redis, persist=False)
    assert client.get("/settings/profile/").status_code == 200
    assert _store(key).load()["note"] == "written during the outage"


def test_a_session_ended_while_redis_is_unreachable_stays_ended_when_it_returns(settings):
    """Redis keeps its old copy of the session (a network cut, not a restart): it must not sign the browser back in."""
    alice = make_user(email="alice@example.com")
    laptop, phone = Client(), Client()
    _sign_in(laptop, alice.email)
    phone_key = _sign_in(phone, alice.email)
    assert phone.get("/settings/profile/").status_code == 200  # now cached in Redis
    from accounts.models import UserSession

    phone_session = UserSession.objects.using("privileged").get(user=alice, session_key_digest=token_digest(phone_key))
    reachable = settings.CACHES
    with tempfile.TemporaryDirectory(prefix="confab-s-") as tmp:
        settings.CACHES = {**reachable, "default": {**reachable["default"], "LOCATION": f"unix://{tmp}/absent.sock?db=0"}}
        assert laptop.post(f"/settings/sessions/{phone_session.pk}/revoke/").status_code == 302
    settings.CACHES = reachable
    assert phone.get("/settings/profile/").status_code == 302
