"""Attack review of what deleting, revoking and ending leaves behind (or takes with it): API keys,
invitations, sessions, conversations, share links, exports and imports, as a user or staff ends
them. Each test failed on the code it was written against."""

import pytest
from django.test import Client

from accounts import services
from accounts.models import Membership, User
from accounts.tests.factories import make_user
from accounts.tests.test_api import API, session_client
from accounts.tests.test_attack_lifecycle import acme, alice  # noqa: F401  (fixtures)
from analytics import buffer
from analytics.models import AuditLog
from billing.tests.conftest import plans  # noqa: F401  (a fixture)
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(plans):  # noqa: F811
    client = Client(raise_request_exception=False)
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


def _audit(**filters) -> list[AuditLog]:
    buffer.buffer_flush("audit")
    return list(AuditLog.objects.using("privileged").filter(**filters).order_by("created_at", "id"))


# --- 1. Ends that leave no trace in the audit log --------------------------------------------------


def test_staff_deactivating_an_account_leaves_an_audit_entry_for_each_api_key_it_revokes(staff, alice):  # noqa: F811
    """Alice revokes her own key: the audit log records it (an `update` of accounts_apikey with
    is_active going False, and an `api_key_revoked` event). Staff deactivate her account, which
    revokes her two other keys. Was: the keys are revoked by one queryset UPDATE, which fires no
    signal, so the audit log has no entry at all for either key (only the user row's change): who
    revoked them, and when, is nowhere. Should: each key revoked by the deactivation has its entry
    (as a revoke by its owner does), the log being the record of changes to audited models."""
    with rls.privileged(reason="test: issue keys"):
        kept, _ = services.api_key_create(user=alice, name="ci", scopes=["account:read"])
        other, _ = services.api_key_create(user=alice, name="laptop", scopes=["chat:read"])
    response = staff.post("/admin/accounts/user/", {"action": "deactivate_users", "_selected_action": [alice.pk]})
    assert response.status_code == 302, response.content[:300]
    with rls.privileged(reason="test: read"):
        assert not User.objects.get(pk=alice.pk).is_active
    assert _audit(table_name="accounts_user", record_id=str(alice.pk), action="update"), "the user's own change is audited"
    for key in (kept, other):
        changes = _audit(table_name="accounts_apikey", record_id=str(key.pk), action="update")
        events = [e for e in _audit(action="api_key_revoked") if e.detail.get("api_key_id") == str(key.pk)]
        assert changes or events, f"no audit entry says key {key.name!r} was revoked by the deactivation"


def test_removing_an_admin_leaves_an_audit_entry_for_each_invitation_it_withdraws(alice, acme):  # noqa: F811
    """Adam (admin of Acme) invited two addresses. Alice removes Adam; the removal withdraws both
    invitations (invitations_sent_withdrawn). Invitations are audited models: Alice withdrawing one
    herself leaves an `update` entry with revoked_at. Was: the removal withdraws them with a
    queryset UPDATE, no signal fires, and the audit log never says they were withdrawn, or by
    whom. Should: one entry per invitation withdrawn, as for a withdrawal by hand."""
    adam = make_user(email="adam@example.com")
    with rls.privileged(reason="test: join and invite"):
        membership = Membership.objects.create(organization=acme, user=adam, role=Membership.Role.ADMIN)
        first, _ = services.invitation_create(actor=adam, organization=acme, email="one@example.com")
        second, _ = services.invitation_create(actor=adam, organization=acme, email="two@example.com")
    assert session_client(alice).delete(f"{API}/organizations/{acme.pk}/members/{membership.pk}").status_code == 204
    for invitation in (first, second):
        with rls.privileged(reason="test: read"):
            invitation.refresh_from_db()
        assert invitation.revoked_at is not None, "the removal withdrew it"
        changes = _audit(table_name="accounts_invitation", record_id=str(invitation.pk), action="update")
        assert changes, f"no audit entry says the invitation to {invitation.email} was withdrawn"


def test_a_password_reset_of_an_unconfirmed_account_leaves_an_audit_entry_for_the_keys_it_switches_off(alice):  # noqa: F811
    """Alice's email was never confirmed; the mailbox's owner resets the password, which revokes the
    account's API keys and switches off its provider keys (unproven_access_revoked). Both are
    audited models. Was: both changes are queryset UPDATEs, no signal fires, and the audit log has
    no entry for either: the record of who lost what, when, is missing exactly where an account was
    taken back. Should: an `update` entry for the API key and one for the provider credential."""
    from accounts.models import ProviderCredential

    with rls.privileged(reason="test: issue keys"):
        User.objects.filter(pk=alice.pk).update(email_verified=False)
        key, _ = services.api_key_create(user=alice, name="ci", scopes=["account:read"])
        credential = ProviderCredential.objects.create(user=alice, provider="openai", access_type="pro_managed", is_active=True)
    services.unproven_access_revoked(user=User.objects.using("privileged").get(pk=alice.pk))
    with rls.privileged(reason="test: read"):
        key.refresh_from_db()
        credential.refresh_from_db()
    assert not key.is_active and not credential.is_active, "the reset switched both off"
    assert _audit(table_name="accounts_apikey", record_id=str(key.pk), action="update"), "no audit entry for the API key revoked"
    assert _audit(table_name="accounts_providercredential", record_id=str(credential.pk), action="update"), (
        "no audit entry for the provider key switched off"
    )
