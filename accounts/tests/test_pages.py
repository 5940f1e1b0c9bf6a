"""The server-rendered account and settings pages, through the test client against the
real database: every request runs under row-level security as the signed-in user."""

import hashlib
import re
from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from accounts import services
from accounts.models import ApiKey, Invitation, Membership, Organization, Preferences, ProviderCredential, User, UserSession
from accounts.tests.factories import PASSWORD, mail_arrives, make_user
from config.crypto import token_digest
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_KEY = "sk-test" + "A1b2C3d4" * 4 + "wxyz"


def db(model):
    """Read what is really stored, past row-level security."""
    return model.objects.using("privileged")


def sign_in(client: Client, email: str, password: str = PASSWORD) -> None:
    response = client.post("/accounts/login/", {"username": email, "password": password})
    assert response.status_code == 302, response.content.decode()[:2000]


def personal_organization(user) -> Organization:
    return db(Membership).select_related("organization").get(user=user, organization__is_personal=True).organization


def link_in(message, path_prefix: str) -> str:
    match = re.search(rf"https?://[^/\s]+({re.escape(path_prefix)}\S+)", message.body)
    assert match, message.body
    return match.group(1)


# --- Sign-up ---------------------------------------------------------------------------


def test_signup_creates_the_account_sends_the_verification_email_and_signs_in(client, celery_worker):
    response = client.post(
        "/accounts/signup/",
        {"email": "New.Person@Example.com", "display_name": "Newbie", "password": PASSWORD, "password_confirm": PASSWORD},
    )

    assert response.status_code == 302 and response["Location"] == "/"
    user = db(User).get(email="new.person@example.com")
    assert user.display_name == "Newbie" and user.check_password(PASSWORD) and not user.email_verified
    assert db(Preferences).filter(user=user).exists()
    membership = db(Membership).select_related("organization").get(user=user)
    assert membership.organization.is_personal and membership.role == Membership.Role.OWNER
    assert len(mail_arrives()) == 1 and mail.outbox[0].to == ["new.person@example.com"]
    assert "/accounts/verify-email/" in mail.outbox[0].body
    assert db(UserSession).filter(user=user, ended_at__isnull=True).count() == 1
    page = client.get("/settings/profile/")
    assert page.status_code == 200
    assert b"new.person@example.com" in page.content and b"Not verified" in page.content


def test_signup_refuses_a_taken_email_whatever_its_case(client):
    make_user(email="taken@example.com")

    response = client.post(
        "/accounts/signup/",
        {"email": "TAKEN@Example.com", "display_name": "Second Try", "password": PASSWORD, "password_confirm": PASSWORD},
    )

    assert response.status_code == 400
    assert response.context["form"].errors["email"] == ["An account with this email already exists. Log in or reset your password."]
    assert b"An account with this email already exists" in response.content
    assert b'value="Second Try"' in response.content  # the input is kept
    assert db(User).filter(email="taken@example.com").count() == 1
    assert db(Organization).count() == 1 and db(Preferences).count() == 1
    assert mail.outbox == []
    assert client.get("/settings/profile/").status_code == 302  # not signed in


def test_signup_refuses_a_weak_password_on_the_password_field(client):
    response = client.post(
        "/accounts/signup/", {"email": "weak@example.com", "display_name": "", "password": "password", "password_confirm": "password"}
    )

    assert response.status_code == 400
    errors = response.context["form"].errors["password"]
    assert any("too short" in e for e in errors) and any("too common" in e for e in errors)
    assert b"This password is too common." in response.content
    assert b'value="weak@example.com"' in response.content
    assert not db(User).filter(email="weak@example.com").exists()
    assert mail.outbox == []


def test_signup_refuses_mismatched_passwords(client):
    response = client.post("/accounts/signup/", {"email": "typo@example.com", "password": PASSWORD, "password_confirm": PASSWORD + "x"})

    assert response.status_code == 400
    assert response.context["form"].errors["password_confirm"] == ["The two passwords do not match."]
    assert not db(User).filter(email="typo@example.com").exists()


# --- Sign-in, throttling, sign-out ----------------------------------------------------------


def test_login_with_email_and_logout(client):
    user = make_user(email="login@example.com")

    page = client.get("/accounts/login/")
    assert b">Email</label>" in page.content

    response = client.post("/accounts/login/", {"username": "LOGIN@example.com", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/settings/profile/").status_code == 200
    assert db(User).get(pk=user.pk).last_login is not None
    assert db(UserSession).filter(user=user, ended_at__isnull=True).count() == 1

    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/settings/profile/").status_code == 302
    assert db(UserSession).filter(user=user, ended_at__isnull=True).count() == 0


def test_login_refuses_a_wrong_password_then_throttles_even_the_right_one(client):
    make_user(email="target@example.com")

    for _ in range(5):
        response = client.post("/accounts/login/", {"username": "target@example.com", "password": "wrong-password-1"})
        assert response.status_code == 200
        assert response.context["form"].non_field_errors() == ["Email or password is incorrect."]
        assert b'value="target@example.com"' in response.content

    response = client.post("/accounts/login/", {"username": "target@example.com", "password": PASSWORD})

    assert response.status_code == 200
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1 and errors[0].startswith("Too many failed sign-in attempts. Try again in ")
    assert b"Too many failed sign-in attempts" in response.content
    assert client.get("/settings/profile/").status_code == 302


def test_admin_login_is_throttled_too(client):
    make_user(email="boss@example.com", role="staff", is_superuser=True)
    for _ in range(5):
        client.post("/admin/login/", {"username": "boss@example.com", "password": "wrong-password-1", "next": "/admin/"})
    response = client.post("/admin/login/", {"username": "boss@example.com", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 200  # the login form again, not the admin index
    assert client.get("/admin/").status_code == 302


def test_unknown_email_gets_the_same_generic_error(client):
    response = client.post("/accounts/login/", {"username": "nobody@example.com", "password": PASSWORD})

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == ["Email or password is incorrect."]


# --- Password reset -------------------------------------------------------------------------


def test_password_reset_by_email_link(client, celery_worker):
    user = make_user(email="forgetful@example.com")

    response = client.post("/accounts/password-reset/", {"email": "Forgetful@example.com"})
    assert response.status_code == 302 and response["Location"] == "/accounts/password-reset/done/"
    assert len(mail_arrives()) == 1 and mail.outbox[0].to == ["forgetful@example.com"]  # queued, sent by the worker
    link = link_in(mail.outbox[0], "/accounts/password-reset/")

    response = client.get(link)
    assert response.status_code == 302  # the token moves into the session
    form_url = response["Location"]
    page = client.get(form_url)
    assert page.status_code == 200 and page.context["validlink"] is True

    new_password = "a-brand-new-passphrase-42"
    response = client.post(form_url, {"new_password1": new_password, "new_password2": new_password})
    assert response.status_code == 302 and response["Location"] == "/accounts/password-reset/complete/"
    assert db(User).get(pk=user.pk).check_password(new_password)

    assert client.get(link).status_code == 200 and client.get(link).context["validlink"] is False  # used once
    other = Client()
    refused = other.post("/accounts/login/", {"username": user.email, "password": PASSWORD})
    assert refused.status_code == 200 and refused.context["form"].non_field_errors() == ["Email or password is incorrect."]
    sign_in(other, user.email, new_password)


def test_password_reset_for_an_unknown_email_sends_nothing_but_says_the_same(client):
    response = client.post("/accounts/password-reset/", {"email": "ghost@example.com"})

    assert response.status_code == 302 and response["Location"] == "/accounts/password-reset/done/"
    assert mail.outbox == []


def test_password_reset_link_with_a_bad_token_is_refused(client):
    user = make_user(email="victim@example.com")
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    uid = urlsafe_base64_encode(force_bytes(user.pk))
    response = client.get(f"/accounts/password-reset/{uid}/bad-token/")

    assert response.status_code == 200 and response.context["validlink"] is False
    assert b"This link does not work" in response.content


# --- Email verification ------------------------------------------------------------------------


def test_email_verification_link_marks_the_email_verified(client, celery_worker):
    client.post("/accounts/signup/", {"email": "verify@example.com", "password": PASSWORD, "password_confirm": PASSWORD})
    link = link_in(mail_arrives()[0], "/accounts/verify-email/")

    response = client.get(link)

    assert response.status_code == 302 and response["Location"] == "/settings/profile/"
    assert db(User).get(email="verify@example.com").email_verified
    page = client.get("/settings/profile/")
    assert b"Verified" in page.content and b"Not verified" not in page.content


def test_tampered_verification_link_is_refused(client):
    user = make_user(email="tamper@example.com")
    token = services.email_verification_token(user=user)

    response = client.get(f"/accounts/verify-email/{token[:-2]}xx/")

    assert response.status_code == 400
    assert b"This verification link is not valid." in response.content
    assert not db(User).get(pk=user.pk).email_verified


def test_verification_email_can_be_sent_again(client, celery_worker):
    make_user(email="resend@example.com")
    sign_in(client, "resend@example.com")

    response = client.post("/accounts/verify-email/resend/")

    assert response.status_code == 302
    assert len(mail_arrives()) == 1 and mail.outbox[0].to == ["resend@example.com"]
    client.get(link_in(mail.outbox[0], "/accounts/verify-email/"))
    assert db(User).get(email="resend@example.com").email_verified


# --- Profile and preferences -----------------------------------------------------------------


def test_profile_and_preferences_are_saved_and_the_theme_applies(client):
    user = make_user(email="prefs@example.com")
    sign_in(client, user.email)
    assert b'data-theme="system"' in client.get("/settings/profile/").content
    assert client.get("/settings/")["Location"] == "/settings/profile/"

    response = client.post(
        "/settings/profile/",
        {"display_name": "Pat", "first_name": "Pat", "last_name": "Lee", "avatar_url": "", "timezone": "Europe/Paris", "locale": "fr"},
    )
    assert response.status_code == 302
    saved = db(User).get(pk=user.pk)
    assert (saved.display_name, saved.timezone, saved.locale) == ("Pat", "Europe/Paris", "fr")

    response = client.post(
        "/settings/preferences/",
        {
            "theme": "dark",
            "preferred_provider": "echo",
            "preferred_model": "echo-1",
            "temperature": "1.10",
            "language": "en",
            "default_persona": "",
            "email_notifications": "on",
        },
    )
    assert response.status_code == 302
    preferences = db(Preferences).get(user=user)
    assert preferences.theme == "dark" and str(preferences.temperature) == "1.10" and not preferences.analytics_opt_out
    page = client.get("/settings/preferences/")
    assert b'data-theme="dark"' in page.content and b"data-theme-preview" in page.content

    response = client.post(
        "/settings/preferences/",
        {"theme": "dark", "preferred_provider": "echo", "preferred_model": "echo-1", "temperature": "3", "language": "de"},
    )
    assert response.status_code == 400 and "temperature" in response.context["form"].errors
    assert db(Preferences).get(user=user).language == "en"


# --- Provider keys -------------------------------------------------------------------------------


def test_provider_key_is_stored_encrypted_and_only_its_mask_is_shown(client):
    user = make_user(email="keys@example.com")
    sign_in(client, user.email)

    response = client.post(
        "/settings/credentials/", {"provider": "openai", "access_type": "user_api_key", "api_key": OPENAI_KEY, "base_url": ""}
    )

    assert response.status_code == 302
    credential = db(ProviderCredential).get(user=user, provider="openai")
    assert credential.api_key_mask == "sk-…wxyz" and OPENAI_KEY not in credential.api_key_encrypted
    page = client.get("/settings/credentials/")
    assert "sk-…wxyz" in page.content.decode() and OPENAI_KEY not in page.content.decode()


def test_malformed_provider_key_is_refused_on_its_field_with_the_other_input_kept(client):
    user = make_user(email="typo-key@example.com")
    sign_in(client, user.email)

    response = client.post(
        "/settings/credentials/",
        {"provider": "gemini", "access_type": "user_api_key", "api_key": "not-a-gemini-key", "base_url": "https://proxy.example.com/v1"},
    )

    assert response.status_code == 400
    message = "That does not look like a Google Gemini key: Gemini keys start with 'AIza' and are 39 characters long."
    assert response.context["form"].errors["api_key"] == [message]
    content = response.content.decode()
    assert escape(message) in content
    assert '<option value="gemini" selected>' in content
    assert 'value="https://proxy.example.com/v1"' in content
    assert "not-a-gemini-key" not in content  # a key is never rendered back
    assert not db(ProviderCredential).filter(user=user).exists()


def test_provider_key_can_be_deleted(client):
    user = make_user(email="del-key@example.com")
    sign_in(client, user.email)
    client.post("/settings/credentials/", {"provider": "openai", "access_type": "user_api_key", "api_key": OPENAI_KEY})
    credential = db(ProviderCredential).get(user=user)

    response = client.post(f"/settings/credentials/{credential.pk}/delete/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and response.content == b""
    assert not db(ProviderCredential).filter(pk=credential.pk).exists()


# --- API keys ------------------------------------------------------------------------------------


def test_api_key_secret_is_shown_once_works_and_stops_working_when_revoked(client):
    user = make_user(email="api@example.com")
    sign_in(client, user.email)

    response = client.post("/settings/api-keys/", {"name": "ci robot", "scopes": ["account:read"], "expires_at": ""})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    content = response.content.decode()
    secret = re.search(r'<code id="new-api-key" class="secret-value">(ck_[a-z0-9]{10}_[A-Za-z0-9_\-]+)</code>', content).group(1)
    key = db(ApiKey).get(user=user)
    assert key.name == "ci robot" and key.scopes == ["account:read"] and key.is_active
    assert secret.startswith(f"ck_{key.prefix}_") and key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert 'data-copy="#new-api-key"' in content

    api = Client()
    me = api.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert me.status_code == 200 and me.json()["email"] == "api@example.com"

    again = client.get("/settings/api-keys/").content.decode()
    assert secret not in again and key.masked in again
    assert 'class="secret-box"' not in again

    response = client.post(f"/settings/api-keys/{key.pk}/revoke/")
    assert response.status_code == 302
    key = db(ApiKey).get(pk=key.pk)
    assert not key.is_active and key.revoked_at is not None
    assert api.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    assert "Revoked" in client.get("/settings/api-keys/").content.decode()


def test_api_key_form_errors_keep_the_input(client):
    user = make_user(email="api-errors@example.com")
    sign_in(client, user.email)

    response = client.post("/settings/api-keys/", {"name": "no scopes", "scopes": []})
    assert response.status_code == 400
    assert response.context["form"].errors["scopes"] == ["Choose at least one scope."]
    assert b'value="no scopes"' in response.content

    past = (timezone.now() - timedelta(days=2)).date().isoformat()
    response = client.post("/settings/api-keys/", {"name": "old", "scopes": ["chat:read"], "expires_at": past})
    assert response.status_code == 400
    assert response.context["form"].errors["expires_at"] == ["The expiry date must be in the future."]
    assert b'value="chat:read"' in response.content and b"checked" in response.content
    assert not db(ApiKey).filter(user=user).exists()


def test_api_key_revoke_by_htmx_returns_the_updated_row(client):
    user = make_user(email="htmx@example.com")
    with rls.privileged(reason="test"):
        key, _ = services.api_key_create(user=user, name="row", scopes=["usage:read"])
    sign_in(client, user.email)

    response = client.post(f"/settings/api-keys/{key.pk}/revoke/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    content = response.content.decode()
    assert content.strip().startswith(f'<tr id="api-key-{key.pk}"') and "Revoked" in content and "<html" not in content
    assert not db(ApiKey).get(pk=key.pk).is_active


# --- Sessions ------------------------------------------------------------------------------------


def test_sessions_are_listed_and_revoking_one_signs_that_browser_out():
    user = make_user(email="twice@example.com")
    laptop, phone = Client(HTTP_USER_AGENT="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"), Client()
    sign_in(laptop, user.email)
    sign_in(phone, user.email)

    page = laptop.get("/settings/sessions/")
    assert page.status_code == 200
    content = page.content.decode()
    sessions = db(UserSession).filter(user=user, ended_at__isnull=True)
    assert sessions.count() == 2
    for session in sessions:
        assert f'id="session-{session.pk}"' in content
    assert content.count("This session") == 1 and "Firefox" in content

    phone_session = sessions.get(session_key_digest=token_digest(phone.session.session_key))
    response = laptop.post(f"/settings/sessions/{phone_session.pk}/revoke/")

    assert response.status_code == 302
    assert db(UserSession).get(pk=phone_session.pk).ended_at is not None
    assert phone.get("/settings/profile/").status_code == 302  # signed out
    assert laptop.get("/settings/profile/").status_code == 200


def test_revoking_the_current_session_signs_out(client):
    user = make_user(email="self-revoke@example.com")
    sign_in(client, user.email)
    own = db(UserSession).get(user=user, session_key_digest=token_digest(client.session.session_key))

    response = client.post(f"/settings/sessions/{own.pk}/revoke/")

    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert client.get("/settings/profile/").status_code == 302
    assert db(UserSession).get(pk=own.pk).ended_at is not None


# --- Organizations -------------------------------------------------------------------------------


def test_invitation_is_accepted_by_the_invited_user_who_is_then_listed(celery_worker):
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    owner, invitee = Client(), Client()
    sign_in(owner, alice.email)

    response = owner.post("/settings/organization/new/", {"name": "Acme"})
    acme = db(Organization).get(name="Acme")
    assert response.status_code == 302 and response["Location"] == f"/settings/organization/?org={acme.pk}"
    assert db(Membership).get(organization=acme, user=alice).role == Membership.Role.OWNER

    response = owner.post(f"/settings/organization/{acme.pk}/invitations/", {"email": "Bob@Example.com", "role": "admin"})
    assert response.status_code == 302
    assert db(Invitation).get(organization=acme).email == "bob@example.com"
    link = link_in(mail_arrives()[-1], "/accounts/invitations/")
    assert "bob@example.com" in owner.get(f"/settings/organization/?org={acme.pk}").content.decode()  # pending

    anonymous = invitee.get(link)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/?next=/accounts/invitations/")

    sign_in(invitee, bob.email)
    page = invitee.get(link)
    assert page.status_code == 200 and b"Accept invitation" in page.content and b"Admin" in page.content
    assert b"Join Acme" in page.content  # named before joining, though the organization row is not visible yet

    response = invitee.post(link)
    assert response.status_code == 302 and response["Location"] == f"/settings/organization/?org={acme.pk}"
    assert db(Membership).get(organization=acme, user=bob).role == Membership.Role.ADMIN
    assert db(Invitation).get(organization=acme).accepted_at is not None

    members = owner.get(f"/settings/organization/?org={acme.pk}")
    assert f'id="membership-{db(Membership).get(organization=acme, user=bob).pk}"' in members.content.decode()
    assert "Acme" in invitee.get(f"/settings/organization/?org={acme.pk}").content.decode()


def test_invitation_for_someone_else_is_not_found():
    alice, carol = make_user(email="alice2@example.com"), make_user(email="carol@example.com")
    acme = personal_organization(alice)
    with rls.privileged(reason="test"):
        _, token = services.invitation_create(actor=alice, organization=acme, email="dave@example.com")
    client = Client()
    sign_in(client, carol.email)

    assert client.get(f"/accounts/invitations/{token}/").status_code == 404
    response = client.post(f"/accounts/invitations/{token}/")
    assert response.status_code == 404
    assert b"does not exist or is addressed to another email address" in response.content
    assert not db(Membership).filter(organization=acme, user=carol).exists()


def test_expired_invitation_is_refused_with_a_message():
    alice, bob = make_user(email="alice3@example.com"), make_user(email="bob3@example.com")
    with rls.privileged(reason="test"):
        org = services.organization_create(user=alice, name="Old Co")
        _, token = services.invitation_create(actor=alice, organization=org, email=bob.email)
    db(Invitation).filter(organization=org).update(expires_at=timezone.now() - timedelta(minutes=1))
    client = Client()
    sign_in(client, bob.email)

    page = client.get(f"/accounts/invitations/{token}/")
    assert page.status_code == 200 and b"has expired" in page.content and b"Accept invitation" not in page.content

    response = client.post(f"/accounts/invitations/{token}/")
    assert response.status_code == 400
    assert b"This invitation has expired. Ask the organization for a new one." in response.content
    assert not db(Membership).filter(organization=org, user=bob).exists()


def test_the_role_change_page_says_the_role_given_not_the_one_taken_away(alice, bob):
    """An owner makes a member an admin on the organization page. The change is stored, but the
    page then says "bob@example.com is now member.": the view words its message from the
    membership it read before the change (the service changed a copy it read again under its
    lock). It should say "bob@example.com is now admin."."""
    with rls.privileged(reason="test"):
        org = services.organization_create(user=alice, name="Team")
        _, token = services.invitation_create(actor=alice, organization=org, email=bob.email)
    member = Client()
    sign_in(member, bob.email)
    assert member.post(f"/accounts/invitations/{token}/").status_code == 302
    bob_membership = db(Membership).get(organization=org, user=bob)

    owner = Client()
    sign_in(owner, alice.email)
    response = owner.post(f"/settings/organization/{org.pk}/members/{bob_membership.pk}/role/", {"role": "admin"}, follow=True)

    assert db(Membership).get(pk=bob_membership.pk).role == Membership.Role.ADMIN
    said = [m.message for m in response.context["messages"]]
    assert "bob@example.com is now admin." in said, said


def test_organization_rename_domain_role_change_remove_and_leave():
    alice, bob = make_user(email="owner@example.com"), make_user(email="member@example.com")
    with rls.privileged(reason="test"):
        org = services.organization_create(user=alice, name="Team")
        _, token = services.invitation_create(actor=alice, organization=org, email=bob.email)
    owner, member = Client(), Client()
    sign_in(owner, alice.email)
    sign_in(member, bob.email)
    member.post(f"/accounts/invitations/{token}/")
    bob_membership = db(Membership).get(organization=org, user=bob)

    response = owner.post(f"/settings/organization/{org.pk}/", {"name": "Team", "auto_join_domain": "not a domain"}, follow=True)
    assert response.redirect_chain == [(f"/settings/organization/?org={org.pk}", 302)]
    assert response.context["update_form"].errors["auto_join_domain"] == ["Enter a domain like example.com (no @, no spaces)."]
    assert b'value="not a domain"' in response.content
    services.email_verify(token=services.email_verification_token(user=alice))  # a domain needs a verified owner at it
    response = owner.post(f"/settings/organization/{org.pk}/", {"name": "Team Two", "auto_join_domain": "Example.com"})
    assert response.status_code == 302
    org = db(Organization).get(pk=org.pk)
    assert (org.name, org.auto_join_domain) == ("Team Two", "example.com")

    # A member cannot manage members: the page says why, nothing changes.
    response = member.post(f"/settings/organization/{org.pk}/members/{bob_membership.pk}/role/", {"role": "admin"}, follow=True)
    assert response.redirect_chain == [(f"/settings/organization/?org={org.pk}", 302)]
    assert b"Only the organization&#x27;s owners and admins can do that." in response.content
    assert db(Membership).get(pk=bob_membership.pk).role == Membership.Role.MEMBER

    with rls.privileged(reason="test"):
        pending, _ = services.invitation_create(actor=alice, organization=org, email="pending@example.com")
    response = member.post(f"/settings/organization/{org.pk}/invitations/{pending.pk}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 204 and response["HX-Redirect"] == f"/settings/organization/?org={org.pk}"
    assert db(Invitation).get(pk=pending.pk).revoked_at is None
    assert b"Only the organization&#x27;s owners and admins can do that." in member.get(response["HX-Redirect"]).content

    assert owner.post(f"/settings/organization/{org.pk}/members/{bob_membership.pk}/role/", {"role": "admin"}).status_code == 302
    assert db(Membership).get(pk=bob_membership.pk).role == Membership.Role.ADMIN

    alice_membership = db(Membership).get(organization=org, user=alice)
    response = owner.post(f"/settings/organization/{org.pk}/leave/", follow=True)
    assert response.redirect_chain[0][1] == 302 and b"last owner" in response.content
    assert db(Membership).filter(pk=alice_membership.pk).exists()

    assert owner.post(f"/settings/organization/{org.pk}/members/{bob_membership.pk}/remove/").status_code == 302
    assert not db(Membership).filter(pk=bob_membership.pk).exists()
    assert member.get(f"/settings/organization/?org={org.pk}").status_code == 404


def test_member_can_leave_and_personal_workspace_cannot_be_left():
    alice, bob = make_user(email="o@example.com"), make_user(email="m@example.com")
    with rls.privileged(reason="test"):
        org = services.organization_create(user=alice, name="Club")
        _, token = services.invitation_create(actor=alice, organization=org, email=bob.email)
    member = Client()
    sign_in(member, bob.email)
    member.post(f"/accounts/invitations/{token}/")

    personal = personal_organization(bob)
    response = member.post(f"/settings/organization/{personal.pk}/leave/", follow=True)
    assert response.redirect_chain[0][1] == 302 and b"You cannot leave your personal workspace." in response.content

    response = member.post(f"/settings/organization/{org.pk}/leave/")
    assert response.status_code == 302
    assert not db(Membership).filter(organization=org, user=bob).exists()


def test_invitation_can_be_revoked():
    alice = make_user(email="revoker@example.com")
    org = personal_organization(alice)
    with rls.privileged(reason="test"):
        pending, _ = services.invitation_create(actor=alice, organization=org, email="later@example.com")
    client = Client()
    sign_in(client, alice.email)

    response = client.post(f"/settings/organization/{org.pk}/invitations/{pending.pk}/revoke/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and response.content == b""
    assert db(Invitation).get(pk=pending.pk).revoked_at is not None
    assert "later@example.com" not in client.get("/settings/organization/").content.decode()


# --- Another tenant's objects --------------------------------------------------------------------


def test_another_tenants_objects_are_not_found():
    alice, bob = make_user(email="a@example.com"), make_user(email="b@example.com")
    with rls.privileged(reason="test"):
        bob_key, _ = services.api_key_create(user=bob, name="bob's", scopes=["account:read"])
        bob_credential = services.provider_credential_set(user=bob, provider="openai", api_key=OPENAI_KEY)
        bob_invitation, _ = services.invitation_create(actor=bob, organization=personal_organization(bob), email="x@example.com")
    bob_org = personal_organization(bob)
    bob_membership = db(Membership).get(user=bob, organization=bob_org)
    alice_org = personal_organization(alice)
    bob_client, client = Client(), Client()
    sign_in(bob_client, bob.email)
    bob_session = db(UserSession).get(user=bob)
    sign_in(client, alice.email)

    assert client.post(f"/settings/credentials/{bob_credential.pk}/delete/").status_code == 404
    assert client.post(f"/settings/api-keys/{bob_key.pk}/revoke/").status_code == 404
    assert client.post(f"/settings/sessions/{bob_session.pk}/revoke/").status_code == 404
    assert client.get(f"/settings/organization/?org={bob_org.pk}").status_code == 404
    assert client.get("/settings/organization/?org=not-a-uuid").status_code == 404
    assert client.post(f"/settings/organization/{bob_org.pk}/", {"name": "Mine now"}).status_code == 404
    assert client.post(f"/settings/organization/{bob_org.pk}/invitations/", {"email": "z@example.com", "role": "member"}).status_code == 404
    assert client.post(f"/settings/organization/{bob_org.pk}/members/{bob_membership.pk}/remove/").status_code == 404
    assert client.post(f"/settings/organization/{alice_org.pk}/members/{bob_membership.pk}/remove/").status_code == 404
    assert client.post(f"/settings/organization/{alice_org.pk}/members/{bob_membership.pk}/role/", {"role": "member"}).status_code == 404
    assert client.post(f"/settings/organization/{bob_org.pk}/invitations/{bob_invitation.pk}/revoke/").status_code == 404
    assert client.post(f"/settings/organization/{alice_org.pk}/invitations/{bob_invitation.pk}/revoke/").status_code == 404

    assert db(ProviderCredential).filter(pk=bob_credential.pk).exists()
    assert db(ApiKey).get(pk=bob_key.pk).is_active
    assert db(UserSession).get(pk=bob_session.pk).ended_at is None
    assert bob_client.get("/settings/profile/").status_code == 200
    assert db(Organization).get(pk=bob_org.pk).name == bob_org.name
    assert db(Membership).filter(pk=bob_membership.pk).exists()
    assert db(Invitation).get(pk=bob_invitation.pk).revoked_at is None
    assert not db(Invitation).filter(email="z@example.com").exists()


def test_settings_pages_need_a_signed_in_user(client):
    for path in (
        "/settings/",
        "/settings/profile/",
        "/settings/preferences/",
        "/settings/credentials/",
        "/settings/api-keys/",
        "/settings/sessions/",
        "/settings/organization/",
    ):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next="), path


def test_every_settings_page_renders_for_a_signed_in_user(client):
    user = make_user(email="pages@example.com")
    sign_in(client, user.email)
    for path in (
        "/settings/profile/",
        "/settings/preferences/",
        "/settings/credentials/",
        "/settings/api-keys/",
        "/settings/sessions/",
        "/settings/organization/",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b'aria-current="page"' in response.content and b"csrfmiddlewaretoken" in response.content, path


# --- Newcomers: the invitation survives sign-in and sign-up; refusals redirect; welcome -----------


def _invite(email: str, *, name: str = "Acme"):
    alice = make_user()
    with rls.privileged(reason="test"):
        org = services.organization_create(user=alice, name=name)
        _, token = services.invitation_create(actor=alice, organization=org, email=email)
    return org, f"/accounts/invitations/{token}/"


def test_an_invite_link_opened_logged_out_leads_through_signup_back_to_the_invitation(client):
    org, link = _invite("newbie@example.com")

    login_page = client.get(link, follow=True)
    assert login_page.status_code == 200 and "Acme" in login_page.content.decode()  # not a bare login page
    signup_link = re.search(r'href="(/accounts/signup/\?next=[^"]+)"', login_page.content.decode()).group(1)
    signup_page = client.get(signup_link.replace("&amp;", "&"))
    assert f'name="next" value="{link}"' in signup_page.content.decode()

    response = client.post(
        signup_link.replace("&amp;", "&"), {"email": "newbie@example.com", "password": PASSWORD, "password_confirm": PASSWORD, "next": link}
    )
    assert response.status_code == 302 and response["Location"] == link
    page = client.get(link)
    assert b"Join Acme" in page.content and b"Accept invitation" in page.content


def test_signup_ignores_a_next_that_leaves_the_site(client):
    response = client.post(
        "/accounts/signup/",
        {"email": "away@example.com", "password": PASSWORD, "password_confirm": PASSWORD, "next": "https://evil.example/"},
    )
    assert response.status_code == 302 and response["Location"] == "/"


def test_an_invite_link_opened_logged_out_leads_through_login_back_to_the_invitation(client):
    bob = make_user(email="bob-login@example.com")
    _org, link = _invite(bob.email)
    response = client.post(f"/accounts/login/?next={link}", {"username": bob.email, "password": PASSWORD, "next": link})
    assert response.status_code == 302 and response["Location"] == link


def test_pending_invitations_for_the_users_email_are_shown(client):
    _invite("carol-p@example.com", name="Globex")
    response = client.post("/accounts/signup/", {"email": "carol-p@example.com", "password": PASSWORD, "password_confirm": PASSWORD})
    assert response.status_code == 302
    home = client.get(response["Location"])
    # Not before the address is confirmed: whoever signs up with it is not told who invited it.
    assert "Globex" not in home.content.decode() and "Globex" not in client.get("/settings/organization/").content.decode()
    with rls.privileged(reason="test: the email confirmed"):
        User.objects.filter(email="carol-p@example.com").update(email_verified=True)
    page = client.get("/settings/organization/")
    assert "Invitations for you" in page.content.decode() and "Globex" in page.content.decode()


def test_a_refused_organization_change_redirects_with_the_input_and_the_error_kept(client):
    alice = make_user(email="prg@example.com")
    sign_in(client, alice.email)
    org = personal_organization(alice)

    response = client.post(f"/settings/organization/{org.pk}/", {"name": "Renamed", "auto_join_domain": "not a domain"})
    assert response.status_code == 302 and response["Location"] == f"/settings/organization/?org={org.pk}"
    page = client.get(response["Location"])
    assert page.context["update_form"].errors["auto_join_domain"] == ["Enter a domain like example.com (no @, no spaces)."]
    assert b'value="Renamed"' in page.content
    assert client.get(response["Location"]).context["update_form"].errors == {}  # shown once

    response = client.post(f"/settings/organization/{org.pk}/leave/")
    assert response.status_code == 302
    assert b"You cannot leave your personal workspace." in client.get(response["Location"]).content

    response = client.post(f"/settings/organization/{org.pk}/invitations/", {"email": "not an email", "role": "member"})
    assert response.status_code == 302
    page = client.get(response["Location"])
    assert page.context["invite_form"].errors["email"] and b'value="not an email"' in page.content


def test_signup_shows_every_password_problem_at_once(client):
    response = client.post("/accounts/signup/", {"email": "all@example.com", "password": "123", "password_confirm": "1234"})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert any("too short" in e for e in errors["password"]) and any("entirely numeric" in e for e in errors["password"])
    assert errors["password_confirm"] == ["The two passwords do not match."]


def test_welcome_back_is_only_for_returning_users(client):
    client.post("/accounts/signup/", {"email": "fresh@example.com", "password": PASSWORD, "password_confirm": PASSWORD})
    home = client.get("/").content.decode()
    assert "Welcome back" not in home and "Welcome to Confab" in home
    client.post("/accounts/logout/")
    sign_in(client, "fresh@example.com")
    assert "Welcome back" in client.get("/").content.decode()


def test_the_demo_banner_names_the_port_really_served(monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    monkeypatch.setenv("PORT", "8123")
    out = StringIO()
    call_command("demo_data", stdout=out)
    assert "http://127.0.0.1:8123/accounts/login/" in out.getvalue()
