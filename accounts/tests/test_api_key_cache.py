"""The API keys a process remembers (accounts/api_key_cache.py): a repeat request reads no row,
and every committed change to a key or its owner is heard and forgets it, also across a
listener that lost its connection. Committed transactions, a real listener thread."""

import os
import time

import psycopg
import pytest
from django.db import connections

from accounts import api_key_cache
from accounts.models import ApiKey, User
from accounts.services import ApiKeyRejected, api_key_authenticate, api_key_create, api_key_revoke, user_deactivate
from accounts.tests.factories import make_user
from analytics import buffer
from analytics.models import AuditLog
from config.crypto import token_digest
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _until(condition, what: str, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.01)


def _listening() -> bool:
    return time.monotonic() < api_key_cache._alive_until


@pytest.fixture
def cache_on(settings):
    settings.API_KEY_CACHE = True
    api_key_cache.forget(api_key_cache.ALL_USERS)
    api_key_cache._listener_ensure()
    _until(_listening, "the listener to hear")
    yield
    api_key_cache.listener_stop()  # its connection would keep the test database from being dropped


def _key(user, scopes=("chat:read",)):
    with rls.privileged(reason="test: issue an API key"):
        return api_key_create(user=user, name="k", scopes=list(scopes))


def _remembered(secret) -> bool:
    return token_digest(secret) in api_key_cache._entries


def _barrier(user):
    """A change to another user's key, committed after whatever came before: once it is heard,
    every earlier notification has been (PostgreSQL delivers them in commit order)."""
    _, secret = _key(user)
    api_key_authenticate(raw_key=secret)
    assert _remembered(secret)
    with rls.privileged(reason="test: change a key as a barrier"):
        ApiKey.objects.filter(key_hash=token_digest(secret)).update(name="barrier")
    _until(lambda: not _remembered(secret), "the barrier's notification")


def test_a_repeat_request_reads_no_row_and_gets_its_own_instances(cache_on, django_assert_num_queries):
    alice = make_user(email="alice@example.com")
    _, secret = _key(alice, scopes=("chat:read", "chat:write"))
    first_user, first_key = api_key_authenticate(raw_key=secret)
    first_key.scopes.append("billing:manage")  # a request changing its instance changes no other's

    with django_assert_num_queries(0):
        user, key = api_key_authenticate(raw_key=secret)

    assert (user.pk, key.pk) == (alice.pk, first_key.pk)
    assert key.scopes == ["chat:read", "chat:write"]
    assert user is not first_user and key is not first_key


def test_a_revoked_key_is_forgotten_and_refused(cache_on):
    alice = make_user(email="alice@example.com")
    key, secret = _key(alice)
    api_key_authenticate(raw_key=secret)
    assert _remembered(secret)

    with rls.privileged(reason="test: revoke"):
        api_key_revoke(user=alice, api_key=key)

    _until(lambda: not _remembered(secret), "the revocation to be heard")
    with pytest.raises(ApiKeyRejected, match="revoked"):
        api_key_authenticate(raw_key=secret)


@pytest.mark.parametrize("change", ["owner deactivated", "owner deleted", "key deleted", "scopes changed"])
def test_a_change_to_the_key_or_its_owner_is_heard(cache_on, change):
    alice = make_user(email="alice@example.com")
    key, secret = _key(alice)
    api_key_authenticate(raw_key=secret)
    assert _remembered(secret)

    with rls.privileged(reason="test: change the key's owner or scopes"):
        if change == "owner deactivated":
            user_deactivate(user=User.objects.get(pk=alice.pk))
        elif change == "owner deleted":
            User.objects.filter(pk=alice.pk).update(deleted_at=key.created_at)
        elif change == "key deleted":
            ApiKey.objects.filter(pk=key.pk).delete()
        else:
            ApiKey.objects.filter(pk=key.pk).update(scopes=["chat:read", "chat:write"])

    _until(lambda: not _remembered(secret), f"{change} to be heard")
    if change == "scopes changed":
        assert api_key_authenticate(raw_key=secret)[1].scopes == ["chat:read", "chat:write"]
    else:
        with pytest.raises(ApiKeyRejected):
            api_key_authenticate(raw_key=secret)


def test_a_truncate_forgets_every_key(cache_on):
    _, secret = _key(make_user(email="alice@example.com"))
    api_key_authenticate(raw_key=secret)
    with connections["owner"].cursor() as cur:
        cur.execute("TRUNCATE accounts_apikey")
    _until(lambda: not _remembered(secret), "the truncate to be heard")


def test_recording_a_keys_use_or_a_sign_in_forgets_nothing(cache_on):
    alice = make_user(email="alice@example.com")
    key, secret = _key(alice)
    api_key_authenticate(raw_key=secret)
    with rls.privileged(reason="test: record a use and a sign-in"):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=key.created_at)
        User.objects.filter(pk=alice.pk).update(last_login=key.created_at)

    _barrier(make_user(email="bob@example.com"))
    assert _remembered(secret)


def test_a_row_read_before_a_change_is_heard_is_not_kept(cache_on):
    alice = make_user(email="alice@example.com")
    _, secret = _key(alice)
    digest = token_digest(secret)
    read_at = api_key_cache.epoch()
    api_key_cache.forget(str(make_user(email="bob@example.com").pk))  # any notification between the read and the keeping

    api_key_cache.keep(digest, alice.pk, ("a row read before",), read_at_epoch=read_at)

    assert digest not in api_key_cache._entries
    api_key_cache.keep(digest, alice.pk, ("a row read after",), read_at_epoch=api_key_cache.epoch())
    assert api_key_cache._entries[digest] == ("a row read after",)


def test_a_listener_that_lost_its_connection_trusts_nothing_it_may_have_missed(cache_on, monkeypatch, raw_app_connection):
    monkeypatch.setattr(api_key_cache, "RECONNECT_DELAY", 0.5)
    alice = make_user(email="alice@example.com")
    key, secret = _key(alice)
    api_key_authenticate(raw_key=secret)
    assert _remembered(secret)

    with raw_app_connection.cursor() as cur:  # its own role may end it
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [api_key_cache.APPLICATION_NAME])
        assert cur.fetchall() == [(True,)]
    _until(lambda: not _listening(), "the lost connection to be noticed")
    assert not _remembered(secret)
    # Revoked while nobody listens: the database is read, and says so.
    with rls.privileged(reason="test: revoke"):
        api_key_revoke(user=alice, api_key=key)
    with pytest.raises(ApiKeyRejected, match="revoked"):
        api_key_authenticate(raw_key=secret)

    _until(_listening, "the listener to reconnect")
    with pytest.raises(ApiKeyRejected, match="revoked"):
        api_key_authenticate(raw_key=secret)


def test_off_every_request_reads_its_key(settings, django_assert_num_queries):
    settings.API_KEY_CACHE = False
    _, secret = _key(make_user(email="alice@example.com"))
    api_key_authenticate(raw_key=secret)
    with django_assert_num_queries(1):
        api_key_authenticate(raw_key=secret)


def test_a_listener_that_does_not_hear_its_own_probe_is_never_trusted(cache_on, monkeypatch, raw_app_connection):
    """As behind a pooler in transaction mode (LISTEN on one server connection, NOTIFY on another)."""
    api_key_cache.listener_stop()
    monkeypatch.setattr(api_key_cache, "HEARTBEAT", 0.05)
    monkeypatch.setattr(api_key_cache, "_probe_send", lambda conn, probe: conn.execute("NOTIFY accounts_api_key_probe_elsewhere"))
    api_key_cache._listener_ensure()
    alice = make_user(email="alice@example.com")
    _, secret = _key(alice)

    deadline = time.monotonic() + 1.0  # 20 probes
    while time.monotonic() < deadline:
        api_key_authenticate(raw_key=secret)
        assert not _listening() and not _remembered(secret)
        time.sleep(0.05)
    with raw_app_connection.cursor() as cur:  # connected and listening all along
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [api_key_cache.APPLICATION_NAME])
        assert cur.fetchone() == (1,)


def _change_triggers() -> set[str]:
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'accounts_%%_changed_%%' AND NOT tgisinternal")
        return {name for (name,) in cur.fetchall()}


def test_the_migration_reverses_and_applies_again():
    from django.db.migrations.executor import MigrationExecutor

    assert len(_change_triggers()) == 6  # update, delete, truncate on each table
    leaves = MigrationExecutor(connections["owner"]).loader.graph.leaf_nodes()
    MigrationExecutor(connections["owner"]).migrate([("accounts", "0013_api_key_signin_in_one_query")])
    try:
        assert _change_triggers() == set()
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaves)
    assert len(_change_triggers()) == 6


@pytest.mark.parametrize("state", ["DISABLE", "ENABLE"])
def test_nothing_is_remembered_while_a_trigger_is_missing_or_fires_only_in_origin_sessions(cache_on, monkeypatch, state):
    """As when new code runs before its migration: nothing would announce a revocation (disabled),
    or nothing made under session_replication_role = replica would (enabled for origin only)."""
    monkeypatch.setattr(api_key_cache, "HEARTBEAT", 0.05)
    monkeypatch.setattr(api_key_cache, "LIVENESS", 0.3)
    _, secret = _key(make_user(email="alice@example.com"))
    with connections["owner"].cursor() as cur:
        cur.execute(f"ALTER TABLE accounts_apikey {state} TRIGGER accounts_apikey_changed_update")
    try:
        _until(lambda: not _listening(), "the listener to stop trusting itself")
        for _ in range(10):
            api_key_authenticate(raw_key=secret)
            assert not _remembered(secret)
            time.sleep(0.05)
    finally:
        with connections["owner"].cursor() as cur:
            cur.execute("ALTER TABLE accounts_apikey ENABLE ALWAYS TRIGGER accounts_apikey_changed_update")
    _until(_listening, "the listener to trust itself again")
    api_key_authenticate(raw_key=secret)
    assert _remembered(secret)


@pytest.mark.skipif(not os.environ.get("DATABASE_ADMIN_URL"), reason="needs a superuser (DATABASE_ADMIN_URL) to take the replica role")
def test_a_change_made_under_the_replica_role_is_heard(cache_on):
    """Logical replication applies changes, and a hand-made bulk fix may run, with
    session_replication_role = replica, where a trigger enabled the ordinary way does not fire."""
    alice = make_user(email="alice@example.com")
    key, secret = _key(alice)
    api_key_authenticate(raw_key=secret)
    assert _remembered(secret)
    database = connections["owner"].settings_dict["NAME"]
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], dbname=database) as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE accounts_apikey SET revoked_at = now() WHERE id = %s", [key.pk])
    _until(lambda: not _remembered(secret), "the replica-role revocation to be heard")
    with pytest.raises(ApiKeyRejected, match="revoked"):
        api_key_authenticate(raw_key=secret)


def test_a_clone_is_the_instance_loaded_again(cache_on):
    """model_clone: what each request gets from the remembered key and owner."""
    from config.db.rows import model_clone

    alice = make_user(email="alice@example.com")
    with rls.privileged(reason="test: give the owner metadata"):
        User.objects.filter(pk=alice.pk).update(metadata={"theme": {"mode": "dark"}})
    _, secret = _key(alice, scopes=("chat:read", "chat:write"))
    with rls.privileged(reason="test: load as the worker role"):
        loaded = User.objects.get(pk=alice.pk)  # on the privileged alias
        loaded.key = ApiKey.objects.get(user_id=alice.pk)

    clone = model_clone(loaded, "default")

    fields = [f.attname for f in User._meta.concrete_fields]
    assert [getattr(clone, name) for name in fields] == [getattr(loaded, name) for name in fields]
    assert clone._state.db == "default" and not clone._state.adding  # the caller's alias, never the template's
    assert clone.metadata is not loaded.metadata and clone.metadata["theme"] is not loaded.metadata["theme"]
    assert not hasattr(clone, "key")  # nothing but the fields
    with rls.privileged(reason="test: save a clone"):
        key_clone = model_clone(loaded.key, "privileged")
        assert key_clone.scopes is not loaded.key.scopes
        key_clone.name = "renamed"
        key_clone.save(update_fields=["name"])  # an UPDATE of the loaded row, not an INSERT
        assert ApiKey.objects.filter(user_id=alice.pk).values_list("name", flat=True).get() == "renamed"
    # Audited as a change from the values as loaded (post_init's snapshot).
    buffer.buffer_flush("audit")
    with rls.privileged(reason="test: read the audit log"):
        change = AuditLog.objects.filter(table_name="accounts_apikey", record_id=str(key_clone.pk), action="update").get()
    assert change.old_values == {"name": "k"} and change.new_values == {"name": "renamed"}
