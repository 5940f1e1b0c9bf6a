"""Attack review of the flows that sign someone in or trust a token: sign-up and domain
auto-join, verification and reset links, invitations, sign-in throttles, sessions, "next".

Each test here fails on the code as reviewed."""

import re

import pytest
from django.core import mail
from django.db import connections
from django.test import Client

from accounts import services
from accounts.models import Membership, Organization, User
from accounts.tests.factories import PASSWORD, mail_arrives, make_user
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def db(model):
    return model.objects.using("privileged")


def _verified(user: User) -> User:
    return services.email_verify(token=services.email_verification_token(user=user))


def _team_admitting(domain: str) -> Organization:
    owner = _verified(make_user(email=f"boss@{domain}"))
    with rls.privileged(reason="test: organization with auto-join"):
        organization = services.organization_create(user=owner, name="Acme")
        return services.organization_update(actor=owner, organization=organization, auto_join_domain=domain)


def test_an_address_at_another_domain_cannot_auto_join_by_quoting_the_domain_in_its_local_part(celery_worker):
    """Django's EmailField takes a quoted local part, "@" included: `"x@acme.test@"@attacker.test`
    is a valid address whose mailbox is at attacker.test, where the attacker reads the confirmation
    mail. The join rule in the database (accounts 0008, ADMITS) reads the domain as
    split_part(email, '@', 2), the text after the FIRST "@": "acme.test".
    Was: the attacker signs up with that address, opens the link mailed to their own domain, and
    becomes a member of Acme, whose auto-join admits only people with a confirmed acme.test address.
    Should: the domain is what follows the last "@" (attacker.test), so nothing is joined (or such
    an address is refused at sign-up)."""
    acme = _team_admitting("acme.test")
    address = '"x@acme.test@"@attacker.test'
    browser = Client()
    response = browser.post("/accounts/signup/", {"email": address, "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD})
    if response.status_code != 302:
        return  # refused at sign-up: also a fix
    sent = mail_arrives(1)
    link = re.search(r"https?://[^/\s]+(/accounts/verify-email/\S+)", sent[-1].body).group(1)
    assert sent[-1].to[0].endswith("@attacker.test")  # the mail goes to the attacker's own domain
    browser.get(link)

    joined = db(Membership).filter(organization=acme, user__email=address).exists()
    assert not joined, "an address at attacker.test joined the organization that admits acme.test"


def test_the_databases_join_rule_reads_the_domain_after_the_last_at():
    """The same address stored before sign-up refused quoted ones (or written by another path):
    the database's own rule (accounts 0020) reads the domain after the last "@"."""
    acme = _team_admitting("acme.test")
    with rls.privileged(reason="test: an address stored before sign-up refused quoted ones"):
        squatter = User.objects.create(email='"x@acme.test@"@attacker.test', email_verified=True)
    with rls.atomic_as(squatter.pk), connections["default"].cursor() as cur:
        cur.execute("SELECT accounts_auto_join_organizations(), accounts_may_join(%s, 'member')", [acme.pk])
        admitted, may_join = cur.fetchone()
    assert (acme.pk in admitted, may_join) == (False, False)


def _reset_link(email: str) -> str:
    mail.outbox.clear()
    assert Client().post("/accounts/password-reset/", {"email": email}).status_code == 302
    return re.search(r"https?://[^/\s]+(/accounts/password-reset/\S+)", mail_arrives(1)[-1].body).group(1)


def _sign_in(client: Client, email: str, password: str = PASSWORD) -> Client:
    response = client.post("/accounts/login/", {"username": email, "password": password})
    assert response.status_code == 302, response.content.decode()[:2000]
    return client


def test_an_api_key_minted_by_whoever_squatted_an_unconfirmed_address_dies_when_its_owner_takes_the_account_back(celery_worker):
    """Account pre-hijacking. The attacker signs up with the victim's address (nothing is
    confirmed at sign-up) and mints an API key with every scope; no confirmed email is needed for
    that. Later the victim, told at sign-up "An account with this email already exists. Log in or
    reset your password.", resets the password through the mailed link and confirms the address:
    the reset ends every session (the attacker's too), which is how the product says an intruder
    is put out.
    Was: the attacker's key still signs in as the victim after the reset and the confirmation, and
    reads the victim's account (and every organization the victim joins) through /api/v1/.
    Should: the key made before the mailbox's owner proved it (by the reset link or the
    confirmation) stops working, as the sessions do (or an unconfirmed account cannot mint keys)."""
    victim_email = "dana@victim.test"
    attacker = Client()
    response = attacker.post(
        "/accounts/signup/", {"email": victim_email, "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 302
    minted = attacker.post(
        "/settings/api-keys/",
        {"name": "sync", "scopes": ["account:read", "account:write", "chat:read", "chat:write", "usage:read"], "expires_at": ""},
    )
    secret = re.search(r"(ck_[a-z0-9]{10}_[A-Za-z0-9_\-]+)", minted.content.decode()).group(1)

    # The victim takes the account back through their mailbox.
    victim = Client()
    form_url = victim.get(_reset_link(victim_email))["Location"]
    new_password = "the-real-owners-passphrase-7"
    assert victim.post(form_url, {"new_password1": new_password, "new_password2": new_password}).status_code == 302
    assert attacker.get("/settings/profile/").status_code == 302  # the attacker's session is gone
    owner = db(User).get(email=victim_email)
    services.email_verify(token=services.email_verification_token(user=owner))
    _sign_in(victim, victim_email, new_password)

    me = Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert me.status_code == 401, f"the squatter's key still reads the account: {me.status_code} {me.content[:200]!r}"


def test_a_staff_members_own_password_change_in_admin_leaves_no_other_session_listed_as_signed_in():
    """A staff member whose session may have been stolen changes their password at
    /admin/password_change/ (Django's view: the current session keeps going, every other one no
    longer matches the password). The reset page and the admin's "set password" of a user both end
    every session's record (user_sessions_end_all); this path does not.
    Was: the other browser's session stays listed as signed in on Settings → Sessions and in
    /api/v1/sessions, so the staff member is told the intruder's session is still live, and cannot
    tell whether the change put it out.
    Should: only the current session is listed as signed in after the change."""
    staff = make_user(email="ops@example.com", role="staff", is_superuser=True)
    intruder = _sign_in(Client(), staff.email)
    me = _sign_in(Client(), staff.email)
    new_password = "a-fresh-staff-passphrase-31"
    response = me.post("/admin/password_change/", {"old_password": PASSWORD, "new_password1": new_password, "new_password2": new_password})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert intruder.get("/settings/profile/").status_code == 302  # really signed out
    assert me.get("/settings/profile/").status_code == 200

    from accounts.models import UserSession

    listed = db(UserSession).filter(user=staff, ended_at__isnull=True).count()
    assert listed == 1, f"{listed} sessions listed as signed in after the password change; only this one is"


def test_signing_in_again_as_the_same_user_keeps_one_session_listed(alice):
    """A signed-in user opens the sign-in page again (a bookmark, an invitation's "log in" link)
    and signs in as themselves. Django's login() keeps the session key when the session already
    holds this user, but on_login records a new UserSession for it each time.
    Was: one browser is listed as several signed-in sessions (each marked current); revoking one of
    them from another device deletes the session and ends that row only, so the rest stay listed as
    signed in for a session that no longer exists.
    Should: one browser session, one record."""
    browser = Client()
    for _ in range(3):
        _sign_in(browser, alice.email)

    from accounts.models import UserSession

    listed = db(UserSession).filter(user=alice, ended_at__isnull=True).count()
    assert listed == 1, f"one browser is listed as {listed} signed-in sessions"


@pytest.mark.parametrize("address", ['"\x07ring"@example.com', '"\x1b[2J\x1b[H"@example.com'], ids=["bell", "terminal-escape"])
def test_an_email_with_control_characters_is_refused_at_sign_up_and_in_invitations(alice, address):
    """Django's EmailField takes a quoted local part, and inside quotes most control characters
    (\\x01-\\x08, \\x0e-\\x1f, ESC included). Names refuse control characters (validate_name);
    emails do not.
    Was: the sign-up page opens an account under `"\\x1b[2J..."@example.com` (stored, shown in admin,
    written to the audit log's login events, mailed to), and the invitations API answers 201 for one.
    Should: a form error / 400 saying the address has characters it cannot have."""
    from accounts.tests.test_api import API, session_client

    response = Client().post(
        "/accounts/signup/", {"email": address, "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 400 and not db(User).filter(email=address.lower()).exists(), f"an account was opened under {address!r}"
    with rls.privileged(reason="test: organization"):
        acme = services.organization_create(user=alice, name="Acme")
    invited = session_client(alice).post(f"{API}/organizations/{acme.pk}/invitations", {"email": address}, format="json")
    assert invited.status_code == 400, f"{invited.status_code} {invited.content[:200]!r}"


def test_signing_up_does_not_give_the_guessing_address_a_sign_in_attempt_back(settings):
    """The per-IP ceiling on failed sign-ins is what stops password spraying (a few guesses at each
    of many accounts from one address). A successful sign-in "takes its own attempt back" from the
    IP and per-email ceilings (login_failures_clear, from the user_logged_in signal), because the
    sign-in form counted it first. Sign-up also calls login(), so it takes one back too, though it
    never counted one.
    Was: each sign-up from the guessing address gives it one more guess past the ceiling: after the
    ceiling is reached, sign up a throwaway account, guess once more, and so on without end.
    Should: only an attempt that was counted is taken back; the address stays at its ceiling."""
    settings.THROTTLES = {**settings.THROTTLES, "login_ip": (3, 900)}
    attacker_ip = "198.51.100.66"
    victims = [make_user(email=f"victim{n}@example.com").email for n in range(5)]

    def guess(email: str) -> bool:
        """Whether the guess was refused by the throttle (its password never checked)."""
        response = Client(REMOTE_ADDR=attacker_ip).post("/accounts/login/", {"username": email, "password": "Winter2026!x"})
        assert response.status_code == 200
        return b"Too many failed sign-in attempts" in response.content

    assert [guess(email) for email in victims[:3]] == [False, False, False]
    assert guess(victims[3]) is True  # the address is at its ceiling

    for n in range(2):
        signed_up = Client(REMOTE_ADDR=attacker_ip).post(
            "/accounts/signup/",
            {"email": f"throwaway{n}@attacker.test", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD},
        )
        assert signed_up.status_code == 302

    assert guess(victims[3]) is True, "a sign-up gave the address another guess past its ceiling"
