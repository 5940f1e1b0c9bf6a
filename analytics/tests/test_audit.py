"""The audit log: sign-ins, failures, API keys, privileged access and changes to account
models, with who, from where, old and new values — never a secret — and no way to change it."""

import json

import pytest
from django.db import ProgrammingError, connections, transaction
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import ProviderCredential
from accounts.tests.factories import PASSWORD, make_user
from analytics import buffer
from analytics.models import AuditLog
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_KEY = "sk-" + "a" * 36 + "f3a9"
OTHER_OPENAI_KEY = "sk-" + "b" * 36 + "9z8y"
BROWSER = {"HTTP_USER_AGENT": "Firefox/130 (audit test)", "REMOTE_ADDR": "203.0.113.7"}


def _entries(**filters):
    buffer.buffer_flush("audit")
    return list(AuditLog.objects.using("privileged").filter(**filters).order_by("created_at", "id"))


def _session(user) -> APIClient:
    client = APIClient(**BROWSER)
    client.force_login(user)
    return client


def test_sign_in_failed_sign_in_and_sign_out_are_recorded_with_ip_and_user_agent():
    user = make_user()
    client = APIClient(**BROWSER)
    assert client.post("/accounts/login/", {"username": user.email, "password": "wrong-password-1"}).status_code in (200, 400)
    assert client.post("/accounts/login/", {"username": user.email, "password": PASSWORD}).status_code == 302
    assert client.post("/accounts/logout/").status_code == 302
    entries = _entries(action__in=["login", "login_failed", "logout"])
    assert [(e.action, e.user_id) for e in entries] == [("login_failed", None), ("login", user.pk), ("logout", user.pk)]
    assert entries[0].detail == {"email": user.email}
    assert all(str(e.ip) == "203.0.113.7" and e.user_agent == BROWSER["HTTP_USER_AGENT"] for e in entries)


def test_api_keys_created_and_revoked_are_recorded_without_their_secret():
    user = make_user()
    with rls.privileged(reason="test: issue a key"):
        key, secret = account_services.api_key_create(user=user, name="ci", scopes=["account:read"])
    assert _session(user).delete(f"/api/v1/api-keys/{key.pk}").status_code == 204
    created, revoked = _entries(action__in=["api_key_created", "api_key_revoked"])
    assert (created.action, created.user_id, created.detail) == (
        "api_key_created",
        user.pk,
        {"api_key_id": str(key.pk), "name": "ci", "scopes": ["account:read"]},
    )
    assert (revoked.action, revoked.user_id, str(revoked.ip)) == ("api_key_revoked", user.pk, "203.0.113.7")
    changes = _entries(table_name="accounts_apikey", record_id=str(key.pk))
    assert [c.action for c in changes] == ["create", "update"]
    assert changes[0].user_id is None  # issued outside a request: the system
    assert changes[0].new_values["key_hash"] == "[redacted]" and changes[0].new_values["name"] == "ci"
    assert changes[1].user_id == user.pk  # revoked by the user, through the API
    assert (changes[1].old_values, changes[1].new_values["is_active"]) == ({"is_active": True, "revoked_at": None}, False)
    rows = json.dumps([[c.old_values, c.new_values, c.detail] for c in _entries()])
    assert secret not in rows and key.key_hash not in rows


def test_privileged_access_is_recorded_with_its_reason_and_the_staff_actor():
    staff = make_user(role="staff", is_superuser=True)
    with rls.privileged(reason="support: ticket 42"):
        pass
    assert _session(staff).get("/admin/accounts/user/").status_code == 200
    support = _entries(action="privileged_access", detail__reason="support: ticket 42")
    assert len(support) == 1 and support[0].user_id is None
    admin = [e for e in _entries(action="privileged_access") if e.detail["reason"].startswith("admin GET /admin/accounts/user/")]
    assert len(admin) == 1 and admin[0].user_id == staff.pk and str(admin[0].ip) == "203.0.113.7"


def test_scheduled_system_jobs_are_logged_not_audited(caplog):
    from analytics import counters, services, tasks
    from analytics.tests.factories import make_member, usage_fields

    user, org = make_member()
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        services.usage_record(**usage_fields(user, org))
    buffer.buffer_flush_all()
    before = AuditLog.objects.using("privileged").filter(action="privileged_access").count()
    caplog.set_level("INFO", logger="confab.rls")
    tasks.usage_rollup_task()
    counters.counters_read(scope="org", owner_id=org)  # a missing counter is rebuilt from the ledger
    tasks.usage_counters_reconcile_task()
    tasks.usage_requests_prune_task()
    buffer.buffer_flush_all()
    assert AuditLog.objects.using("privileged").filter(action="privileged_access").count() == before
    assert "usage rollup" in caplog.text and "usage counters" in caplog.text  # logged all the same
    with rls.privileged(reason="support: ticket 43"):  # a person's access stays audited
        pass
    assert len(_entries(action="privileged_access", detail__reason="support: ticket 43")) == 1


def test_flushing_the_buffer_does_not_audit_itself():
    make_user()
    buffer.buffer_flush_all()
    assert buffer.buffer_length("audit") == 0
    before = AuditLog.objects.using("privileged").count()
    for _ in range(3):
        assert buffer.buffer_flush_all() == {"api_log": 0, "event": 0, "audit": 0}
    assert buffer.buffer_length("audit") == 0
    assert AuditLog.objects.using("privileged").count() == before


def test_replacing_a_provider_key_records_the_change_but_never_the_key_or_its_ciphertext():
    user = make_user()
    client = _session(user)
    assert client.post("/api/v1/provider-credentials", {"provider": "openai", "api_key": OPENAI_KEY}, format="json").status_code == 201
    first = ProviderCredential.objects.using("privileged").get(user=user).api_key_encrypted
    assert (
        client.post("/api/v1/provider-credentials", {"provider": "openai", "api_key": OTHER_OPENAI_KEY}, format="json").status_code == 200
    )
    credential = ProviderCredential.objects.using("privileged").get(user=user)
    created, replaced = _entries(table_name="accounts_providercredential")
    assert (created.action, created.user_id, created.record_id) == ("create", user.pk, str(credential.pk))
    assert created.new_values["api_key_encrypted"] == "[redacted]" and created.new_values["provider"] == "openai"
    assert replaced.action == "update" and replaced.user_id == user.pk
    assert replaced.old_values == {"api_key_encrypted": "[redacted]", "api_key_mask": "sk-…f3a9"}
    assert replaced.new_values == {"api_key_encrypted": "[redacted]", "api_key_mask": "sk-…9z8y"}
    assert (str(replaced.ip), replaced.user_agent) == ("203.0.113.7", BROWSER["HTTP_USER_AGENT"])
    everything = json.dumps([[e.old_values, e.new_values, e.detail] for e in _entries()], ensure_ascii=False)
    for secret in (OPENAI_KEY, OTHER_OPENAI_KEY, first, credential.api_key_encrypted):
        assert secret not in everything
    assert client.delete(f"/api/v1/provider-credentials/{credential.pk}").status_code == 204
    deleted = _entries(table_name="accounts_providercredential", action="delete")
    assert len(deleted) == 1 and deleted[0].old_values["api_key_encrypted"] == "[redacted]"


def test_user_changes_record_old_and_new_values_and_a_password_change_shows_no_hash():
    user = make_user(first_name="Ada")
    assert _session(user).patch("/api/v1/me", {"first_name": "Grace"}, format="json").status_code == 200
    with rls.privileged(reason="test: password"):
        user.set_password("another-long-password-7")
        user.save(update_fields=["password"])
    updates = _entries(table_name="accounts_user", record_id=str(user.pk), action="update")
    assert [(u.old_values, u.new_values) for u in updates] == [
        ({"first_name": "Ada"}, {"first_name": "Grace"}),
        ({"password": "[redacted]"}, {"password": "[redacted]"}),
    ]
    assert updates[0].user_id == user.pk and updates[1].user_id is None
    created = _entries(table_name="accounts_user", record_id=str(user.pk), action="create")[0]
    assert created.new_values["password"] == "[redacted]" and created.new_values["email"] == user.email
    assert user.password not in json.dumps([[e.old_values, e.new_values] for e in _entries()])


def test_a_change_that_rolls_back_is_not_recorded():
    user = make_user(first_name="Ada")
    with pytest.raises(RuntimeError), rls.privileged(reason="test: rollback"):
        account_services.user_update(user=user, first_name="Never")
        raise RuntimeError("abort")
    assert _entries(table_name="accounts_user", action="update") == []


def test_the_audit_log_refuses_update_and_delete_even_for_the_worker_and_the_owner():
    make_user()
    entry = _entries()[0]
    for alias in ("privileged", "owner"):
        for statement in (
            "UPDATE analytics_auditlog SET action = 'tampered' WHERE id = %s",
            "DELETE FROM analytics_auditlog WHERE id = %s",
        ):
            with pytest.raises(ProgrammingError, match="immutable|permission denied"), connections[alias].cursor() as cur:
                cur.execute(statement, [entry.pk])
    assert AuditLog.objects.using("privileged").get(pk=entry.pk).action == entry.action


def test_audit_entries_wait_in_redis_not_in_the_request_transaction():
    user = make_user()
    get_redis_connection("default").delete(buffer.buffer_key("audit"))
    _session(user).patch("/api/v1/me", {"last_name": "Lovelace"}, format="json")
    queued = [json.loads(r) for r in get_redis_connection("default").lrange(buffer.buffer_key("audit"), 0, -1)]
    assert any(r["table_name"] == "accounts_user" and r["new_values"] == {"last_name": "Lovelace"} for r in queued)
    assert not AuditLog.objects.using("privileged").filter(table_name="accounts_user", action="update").exists()
