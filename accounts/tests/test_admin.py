"""Staff admin for accounts: every page works in the privileged context, shows every
user's rows, never shows a secret, and its actions go through the services."""

import pytest
from django.urls import reverse

from accounts import services
from accounts.models import ApiKey, Integration, Invitation, Membership, Organization, Preferences, ProviderCredential, User, UserSession
from accounts.tests.factories import make_user
from config.crypto import token_digest
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_KEY = "sk-" + "a" * 40
NEW_OPENAI_KEY = "sk-" + "b" * 36 + "9z8y"
ACCESS_TOKEN = "access-" + "t" * 30


@pytest.fixture
def world():
    """A staff member, and Alice and Bob with a row in every account table."""
    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    rows = {"staff": staff, "alice": alice, "bob": bob}
    with rls.privileged(reason="test fixture"):
        for name, user in (("alice", alice), ("bob", bob)):
            rows[f"{name}_key"], rows[f"{name}_secret"] = services.api_key_create(user=user, name=f"{name}'s key", scopes=["chat:read"])
            UserSession.objects.create(
                user=user, session_key_digest=token_digest(f"sess{user.pk.hex[:28]}"), browser="Firefox 128", os="Linux"
            )
        rows["credential"] = services.provider_credential_set(user=alice, provider="openai", api_key=OPENAI_KEY)
        rows["integration"] = services.integration_connect(
            user=alice, service="calendar", access_token=ACCESS_TOKEN, refresh_token="refresh-" + "r" * 30
        )
        organization = Membership.objects.get(user=alice).organization
        rows["invitation"], _ = services.invitation_create(actor=alice, organization=organization, email="guest@example.com")
    return rows


@pytest.fixture
def staff_client(client, world):
    client.force_login(world["staff"])
    return client


def _url(name, *args):
    return reverse(f"admin:{name}", args=args)


def _privileged(model):
    return model.objects.using("privileged")


# One object of every model, and text that must be on its changelist (Alice's and Bob's rows).
PAGES = {
    User: (lambda w: w["alice"], ["alice@example.com", "bob@example.com"]),
    Preferences: (lambda w: _privileged(Preferences).get(user=w["bob"]), ["alice@example.com", "bob@example.com"]),
    Organization: (
        lambda w: _privileged(Membership).get(user=w["bob"]).organization,
        ["alice@example.com&#x27;s workspace", "bob@example.com&#x27;s workspace"],
    ),
    Invitation: (lambda w: w["invitation"], ["guest@example.com"]),
    UserSession: (lambda w: _privileged(UserSession).get(user=w["bob"]), ["alice@example.com", "bob@example.com"]),
    ApiKey: (lambda w: w["bob_key"], ["alice&#x27;s key", "bob&#x27;s key"]),
    ProviderCredential: (lambda w: w["credential"], ["alice@example.com"]),
    Integration: (lambda w: w["integration"], ["alice@example.com", "calendar"]),
}


@pytest.mark.parametrize("model", PAGES, ids=lambda m: m.__name__)
def test_changelist_and_change_page_show_other_users_rows(staff_client, world, model):
    pick, expected = PAGES[model]
    opts = model._meta
    changelist = staff_client.get(_url(f"{opts.app_label}_{opts.model_name}_changelist"))
    assert changelist.status_code == 200
    html = changelist.content.decode()
    for text in expected:
        assert text in html  # rows of users other than the staff member: the privileged context is in use
    with rls.privileged(reason="test"):
        obj = pick(world)
    change = staff_client.get(_url(f"{opts.app_label}_{opts.model_name}_change", obj.pk))
    assert change.status_code == 200


def test_admin_index_and_add_pages_render(staff_client):
    assert staff_client.get(_url("index")).status_code == 200
    for model in (User, Organization, Preferences, ProviderCredential):
        opts = model._meta
        assert staff_client.get(_url(f"{opts.app_label}_{opts.model_name}_add")).status_code == 200


def test_pages_without_add_are_refused(staff_client):
    for model in (ApiKey, UserSession, Integration, Invitation):
        opts = model._meta
        assert staff_client.get(_url(f"{opts.app_label}_{opts.model_name}_add")).status_code == 403


def test_admin_access_is_announced_for_the_audit_log(staff_client, world):
    reasons = []

    def receiver(sender, reason, **kwargs):
        reasons.append(reason)

    rls.privileged_entered.connect(receiver)
    try:
        staff_client.get(_url("accounts_user_changelist"))
    finally:
        rls.privileged_entered.disconnect(receiver)
    assert any(r.startswith("admin GET /admin/accounts/user/") and str(world["staff"].pk) in r for r in reasons)


def test_provider_credential_shows_only_the_mask(staff_client, world):
    credential = world["credential"]
    ciphertext = _privileged(ProviderCredential).get(pk=credential.pk).api_key_encrypted
    assert ciphertext
    for url in (_url("accounts_providercredential_changelist"), _url("accounts_providercredential_change", credential.pk)):
        html = staff_client.get(url).content.decode()
        assert credential.api_key_mask in html
        assert OPENAI_KEY not in html and ciphertext not in html and "api_key_encrypted" not in html


def test_provider_credential_key_is_replaced_through_the_service(staff_client, world):
    credential = world["credential"]
    url = _url("accounts_providercredential_change", credential.pk)
    data = {"access_type": "user_api_key", "base_url": "", "is_active": "on"}
    refused = staff_client.post(url, {**data, "replace_key": "not-a-key"})
    assert refused.status_code == 200 and "does not look like" in refused.content.decode()
    assert NEW_OPENAI_KEY not in refused.content.decode()

    response = staff_client.post(url, {**data, "replace_key": NEW_OPENAI_KEY})
    assert response.status_code == 302
    stored = _privileged(ProviderCredential).get(pk=credential.pk)
    assert stored.api_key_mask == "sk-…9z8y"
    from config.crypto import secret_decrypt

    assert secret_decrypt(stored.api_key_encrypted) == NEW_OPENAI_KEY

    kept = staff_client.post(url, {**data, "replace_key": "", "base_url": "http://localhost:11434/v1"})
    assert kept.status_code == 302
    again = _privileged(ProviderCredential).get(pk=credential.pk)
    assert again.api_key_encrypted == stored.api_key_encrypted and again.base_url == "http://localhost:11434/v1"


def test_provider_credential_is_added_through_the_service(staff_client, world):
    bob = world["bob"]
    data = {"user": str(bob.pk), "provider": "anthropic", "access_type": "user_api_key", "base_url": "", "is_active": "on"}
    assert "needs the user" in staff_client.post(_url("accounts_providercredential_add"), data).content.decode()
    response = staff_client.post(_url("accounts_providercredential_add"), {**data, "replace_key": "sk-ant-" + "k" * 30 + "wxyz"})
    assert response.status_code == 302
    credential = _privileged(ProviderCredential).get(user=bob, provider="anthropic")
    assert credential.api_key_mask == "sk-…wxyz" and credential.api_key_encrypted


def test_integration_shows_only_the_mask(staff_client, world):
    integration = _privileged(Integration).get(pk=world["integration"].pk)
    for url in (_url("accounts_integration_changelist"), _url("accounts_integration_change", integration.pk)):
        html = staff_client.get(url).content.decode()
        assert integration.access_token_mask in html
        for secret in (ACCESS_TOKEN, "refresh-" + "r" * 30, integration.access_token_encrypted, integration.refresh_token_encrypted):
            assert secret not in html
        assert "token_encrypted" not in html


def test_api_key_pages_show_no_hash_or_secret(staff_client, world):
    key = world["alice_key"]
    for url in (_url("accounts_apikey_changelist"), _url("accounts_apikey_change", key.pk)):
        html = staff_client.get(url).content.decode()
        assert key.masked in html
        assert "key_hash" not in html and key.key_hash not in html and world["alice_secret"] not in html


def test_user_pages_show_no_password_hash(staff_client, world):
    alice = _privileged(User).get(pk=world["alice"].pk)
    digest = alice.password.split("$")[-1]
    for url in (_url("accounts_user_change", alice.pk), _url("auth_user_password_change", alice.pk)):
        response = staff_client.get(url)
        assert response.status_code == 200
        assert digest not in response.content.decode()


def test_invitation_status_column_and_filter(staff_client, world):
    html = staff_client.get(_url("accounts_invitation_changelist") + "?status=pending").content.decode()
    assert "guest@example.com" in html and "pending" in html
    with rls.privileged(reason="test"):
        services.invitation_revoke(actor=world["alice"], invitation=world["invitation"])
    assert "guest@example.com" not in staff_client.get(_url("accounts_invitation_changelist") + "?status=pending").content.decode()
    html = staff_client.get(_url("accounts_invitation_changelist") + "?status=revoked").content.decode()
    assert "guest@example.com" in html and "revoked" in html
    assert world["invitation"].token_hash not in html


def test_deactivate_action_deactivates_users_and_revokes_their_keys(staff_client, world):
    alice, bob = world["alice"], world["bob"]
    response = staff_client.post(
        _url("accounts_user_changelist"),
        {"action": "deactivate_users", "_selected_action": [str(alice.pk), str(world["staff"].pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Deactivated 1 user(s)" in response.content.decode()
    assert _privileged(User).get(pk=alice.pk).is_active is False
    assert _privileged(User).get(pk=world["staff"].pk).is_active is True  # not oneself
    assert _privileged(User).get(pk=bob.pk).is_active is True
    alice_key = _privileged(ApiKey).get(pk=world["alice_key"].pk)
    assert alice_key.is_active is False and alice_key.revoked_at is not None
    assert _privileged(ApiKey).get(pk=world["bob_key"].pk).is_active is True


def test_unticking_active_on_the_change_form_also_revokes_keys(staff_client, world):
    bob = _privileged(User).get(pk=world["bob"].pk)
    response = staff_client.post(_url("accounts_user_change", bob.pk), _user_form(bob, is_active=""))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert _privileged(User).get(pk=bob.pk).is_active is False
    assert _privileged(ApiKey).get(pk=world["bob_key"].pk).is_active is False


def test_revoke_action_revokes_api_keys(staff_client, world):
    response = staff_client.post(
        _url("accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [str(world["alice_key"].pk), str(world["bob_key"].pk)]},
        follow=True,
    )
    assert "Revoked 2 API key(s)" in response.content.decode()
    assert not _privileged(ApiKey).filter(is_active=True).exists()
    assert _privileged(ApiKey).filter(revoked_at__isnull=True).count() == 0


def test_revoke_action_ends_sessions(staff_client, world):
    session = _privileged(UserSession).get(user=world["alice"])
    response = staff_client.post(
        _url("accounts_usersession_changelist"), {"action": "revoke_sessions", "_selected_action": [str(session.pk)]}, follow=True
    )
    assert "Revoked 1 session(s)" in response.content.decode()
    assert _privileged(UserSession).get(pk=session.pk).ended_at is not None
    assert _privileged(UserSession).get(user=world["bob"]).ended_at is None


def test_session_pages_do_not_show_the_session_key_digest(staff_client, world):
    session = _privileged(UserSession).get(user=world["alice"])
    for url in (_url("accounts_usersession_changelist"), _url("accounts_usersession_change", session.pk)):
        assert session.session_key_digest not in staff_client.get(url).content.decode()


def test_add_user_goes_through_the_service(staff_client):
    response = staff_client.post(
        _url("accounts_user_add"),
        {
            "email": "New.Person@Example.com",
            "display_name": "New",
            "first_name": "",
            "last_name": "",
            "role": "member",
            "usable_password": "true",
            "password1": "a-long-enough-pass-42",
            "password2": "a-long-enough-pass-42",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    user = _privileged(User).get(email="new.person@example.com")
    assert response["Location"] == _url("accounts_user_change", user.pk)
    assert user.check_password("a-long-enough-pass-42")
    assert _privileged(Preferences).filter(user=user).exists()
    assert _privileged(Membership).filter(user=user, role="owner", organization__is_personal=True).exists()

    taken = staff_client.post(_url("accounts_user_add"), {"email": "NEW.person@example.com", "role": "member", "usable_password": "false"})
    assert taken.status_code == 200 and "already exists" in taken.content.decode()


def test_non_staff_is_sent_to_the_admin_login_and_sees_no_data(client, world):
    client.force_login(world["alice"])
    for name in ("index", "accounts_user_changelist", "accounts_apikey_changelist"):
        response = client.get(_url(name))
        assert response.status_code == 302
        assert response["Location"].startswith(_url("login"))
    page = client.get(_url("accounts_user_changelist"), follow=True)
    html = page.content.decode()
    assert "bob@example.com" not in html and "alice&#x27;s key" not in html


def _user_form(user, **changes):
    data = {
        "email": user.email,
        "display_name": "",
        "first_name": "",
        "last_name": "",
        "avatar_url": "",
        "timezone": "UTC",
        "locale": "en",
        "role": "member",
        "metadata": "{}",
        "is_active": "on",
        "email_verified": "on" if user.email_verified else "",
    }
    return {name: value for name, value in {**data, **changes}.items() if value != ""}


def test_an_email_changed_in_admin_is_not_confirmed_unless_staff_vouch_for_it(staff_client, world):
    """Staff fix Bob's address: the new one was never confirmed, so it is not marked so (it would
    pass as proven, say for an organization's auto-join domain); ticking the box in the same save vouches."""
    bob = _privileged(User).get(pk=world["bob"].pk)
    _privileged(User).filter(pk=bob.pk).update(email_verified=True)
    bob.email_verified = True
    response = staff_client.post(_url("accounts_user_change", bob.pk), _user_form(bob, email="bob@acme.test", email_verified="on"))
    assert response.status_code == 302, response.content.decode()[:2000]
    stored = _privileged(User).get(pk=bob.pk)
    assert (stored.email, stored.email_verified) == ("bob@acme.test", False)
    # Unticked and ticked again: staff vouch for the address now shown.
    response = staff_client.post(_url("accounts_user_change", bob.pk), _user_form(stored, email_verified="on"))
    assert response.status_code == 302
    assert _privileged(User).get(pk=bob.pk).email_verified is True
