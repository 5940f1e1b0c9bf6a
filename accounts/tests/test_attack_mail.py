"""Attack review of every mail the product sends and every absolute link it builds: where the
links' host comes from, how often anyone can make the product mail an address, what the mails
say, and whether the pages the links open still tell the truth.

The first section fails on the code as reviewed; the last records what held."""

import re
from email import message_from_bytes
from urllib.parse import urlsplit

import pytest
from django.core import mail
from django.test import Client
from django_redis import get_redis_connection

from accounts import services
from accounts.models import User
from accounts.tests.factories import PASSWORD, mail_arrives, make_user
from accounts.tests.test_api import API, session_client
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def queued() -> int:
    """Tasks waiting on the broker's default queue (no worker running: each mail is one task)."""
    return get_redis_connection("default").llen("celery")


def sign_in(client: Client, email: str, password: str = PASSWORD) -> Client:
    response = client.post("/accounts/login/", {"username": email, "password": password})
    assert response.status_code == 302, response.content.decode()[:2000]
    return client


def _link(message, path_prefix: str) -> str:
    match = re.search(rf"(https?://[^/\s]+){re.escape(path_prefix)}\S+", message.body)
    assert match, message.body
    return match.group(0)


@pytest.fixture
def acme(alice):
    with rls.privileged(reason="test"):
        return services.organization_create(user=alice, name="Acme")


# --- Bugs ------------------------------------------------------------------------------------------


def test_a_password_reset_mail_is_not_sent_inside_the_request(client, alice):
    """Every other mail goes through the Celery task after commit; the reset mail is sent by
    Django's PasswordResetForm inside the request. So the answer for a real account waits on the
    SMTP server and the answer for an unknown address does not (the page's identical wording
    reveals nothing, its timing reveals who has an account), and an SMTP failure is logged and
    swallowed by Django with no retry: the user is told a mail is on its way that never leaves."""
    response = client.post("/accounts/password-reset/", {"email": alice.email})
    assert response.status_code == 302
    assert mail.outbox == [], "the reset mail was sent over SMTP while the request waited"
    assert queued() == 1, "the reset mail should be queued for the worker like the other mails"


def test_emailed_links_do_not_take_their_host_from_the_request(settings, alice, celery_worker):
    """Links in mails are built from the Host header of whoever triggered the mail. Anyone can ask
    for a reset of someone else's account: with several names in DJANGO_ALLOWED_HOSTS (an internal
    name, a wildcard `.example.com`), the requester chooses which host the victim's reset token is
    sent to. The link should come from one configured site URL."""
    settings.ALLOWED_HOSTS = ["confab.example.com", "confab-internal.example.net"]
    settings.SITE_URL = "https://confab.example.com"  # as production sets it (from DJANGO_ALLOWED_HOSTS when unset)
    for host in ("confab.example.com", "confab-internal.example.net"):
        assert Client(HTTP_HOST=host).post("/accounts/password-reset/", {"email": alice.email}).status_code == 302
    sent = mail_arrives(2)
    origins = {urlsplit(_link(m, "/accounts/password-reset/"))[:2] for m in sent}
    assert origins == {("https", "confab.example.com")}, (
        f"one account's reset links point at {sorted(origins)}: the requester picked the host"
    )
    # Invitations and confirmation links too.
    with rls.privileged(reason="test"):
        acme = services.organization_create(user=alice, name="Acme")
    browser = session_client(alice)
    browser.defaults["HTTP_HOST"] = "confab-internal.example.net"
    assert browser.post(f"{API}/organizations/{acme.pk}/invitations", {"email": "carol@example.org"}, format="json").status_code == 201
    assert "https://confab.example.com/accounts/invitations/" in mail_arrives(3)[-1].body


def test_asking_for_the_verification_mail_again_and_again_is_throttled():
    """Anyone can sign up with someone else's address and press "send again" without limit: the
    product mails that stranger as often as asked (password reset is limited to 3 an hour)."""
    client = Client()
    response = client.post(
        "/accounts/signup/", {"email": "stranger@example.com", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 302
    for _ in range(10):
        client.post("/accounts/verify-email/resend/")
    assert queued() <= 4, f"{queued()} verification mails to one address in a few seconds"


def test_inviting_one_address_again_and_again_is_throttled(alice, acme):
    """Each new invitation withdraws the pending one and mails again, with a subject built from the
    inviter's display name and the organization name (both free text): one admin, or anyone who
    creates an organization, can mail the same stranger without limit through the product."""
    client = session_client(alice)
    answers = [
        client.post(f"{API}/organizations/{acme.pk}/invitations", {"email": "victim@example.org"}, format="json").status_code
        for _ in range(10)
    ]
    assert 429 in answers, answers
    assert queued() <= 4, f"{queued()} invitation mails to one address in a few seconds"


def test_an_account_that_has_not_confirmed_its_email_cannot_mail_invitations_without_limit():
    """A fresh, unconfirmed sign-up can create an organization and mail any number of strangers a
    message whose subject it writes (display name + organization name): a spam relay with
    Confab's sending reputation. Invitations from an unconfirmed account should be refused, or
    at least counted per inviter."""
    client = Client()
    client.post(
        "/accounts/signup/",
        {"email": "spammer@example.com", "display_name": "Your bank", "password": PASSWORD, "password_confirm": PASSWORD},
    )
    assert not User.objects.using("privileged").get(email="spammer@example.com").email_verified
    api = session_client(User.objects.using("privileged").get(email="spammer@example.com"))
    org_id = api.post(f"{API}/organizations", {"name": "Account suspended - call +1 555 0100"}, format="json").json()["id"]
    before = queued()
    answers = [
        api.post(f"{API}/organizations/{org_id}/invitations", {"email": f"target{i}@example.org"}, format="json").status_code
        for i in range(60)
    ]
    assert queued() - before < 60 and {403, 429} & set(answers), "an unconfirmed account mailed 60 strangers in a row"


def test_the_invitation_page_names_the_organization_as_it_is_now(alice, acme):
    """The invitation keeps the organization's name from when it was sent (the invitee cannot read
    the organization row), and a rename never updates it: an admin invites as "Acme", renames the
    organization, and the invitee accepts a page that still says "Join Acme"."""
    bob = make_user(email="bob@example.com", display_name="Bob", email_verified=True)
    with rls.privileged(reason="test"):
        _invitation, token = services.invitation_create(actor=alice, organization=acme, email=bob.email, base_url="http://testserver")
    renamed = session_client(alice).patch(f"{API}/organizations/{acme.pk}", {"name": "Totally Different Ltd"}, format="json")
    assert renamed.status_code == 200

    page = sign_in(Client(), bob.email).get(f"/accounts/invitations/{token}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Join Acme" not in text, "the invitee is shown the name the organization no longer has"
    assert "Totally Different Ltd" in text


def test_the_password_reset_mail_says_when_its_link_expires(client, alice, celery_worker, settings):
    """The verification mail says "works for 3 days" and the invitation "expires in 7 days"; the
    reset mail says only "works once", though it also stops after PASSWORD_RESET_TIMEOUT."""
    settings.PASSWORD_RESET_TIMEOUT = 3 * 24 * 3600
    client.post("/accounts/password-reset/", {"email": alice.email})
    body = mail_arrives()[0].body
    assert re.search(r"\b(3 days|72 hours)\b", body), body


# --- What held (kept as regression checks) ------------------------------------------------------


def test_held_x_forwarded_host_and_unlisted_hosts_never_reach_a_link(client, alice, celery_worker):
    response = client.post("/accounts/password-reset/", {"email": alice.email}, HTTP_X_FORWARDED_HOST="evil.example")
    assert response.status_code == 302
    assert "evil.example" not in mail_arrives()[0].body
    refused = Client(raise_request_exception=False).post("/accounts/password-reset/", {"email": alice.email}, HTTP_HOST="evil.example")
    assert refused.status_code == 400


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\r\n"], ids=["LS", "PS", "NEL", "CRLF"])
def test_held_line_separators_in_names_never_split_a_mail_header(alice, separator, celery_worker):
    """NEL, CR/LF and (since they forged a second line of a shared title) LS/PS are refused by
    validate_name; were one accepted, Python would encode the subject as encoded-words, so no raw
    header line is ever produced."""
    name = f"Eve{separator}Bcc: loot@evil.example"
    with rls.privileged(reason="test"):
        try:
            services.user_update(user=alice, display_name=name)
            org = services.organization_create(user=alice, name=f"Org{separator}X-Evil: 1")
        except Exception as exc:  # refused with a sentence: nothing reaches a header
            assert "control characters" in str(exc)
            return
        services.invitation_create(actor=alice, organization=org, email="guest@example.com", base_url="http://testserver")
    raw = mail_arrives()[0].message().as_bytes()
    parsed = message_from_bytes(raw)
    assert parsed.get("Bcc") is None and parsed.get("X-Evil") is None
    assert b"\nBcc:" not in raw and b"\nX-Evil:" not in raw


def test_held_a_rolled_back_invitation_page_post_mails_nothing(alice, acme, monkeypatch):
    from accounts.services import organizations

    def boom(*args, **kwargs):
        raise RuntimeError("after the insert")

    real_create = organizations.Invitation.objects.create

    def create_then_fail(**kwargs):
        real_create(**kwargs)
        boom()

    monkeypatch.setattr(organizations.Invitation.objects, "create", create_then_fail)
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    response = client.post(f"/settings/organization/{acme.pk}/invitations/", {"email": "guest@example.com", "role": "member"})
    assert response.status_code == 500
    assert mail.outbox == [] and queued() == 0


def test_held_a_withdrawn_or_replaced_invitation_link_stops_working(alice, acme):
    bob = make_user(email="bob@example.com", email_verified=True)
    with rls.privileged(reason="test"):
        first, first_token = services.invitation_create(actor=alice, organization=acme, email=bob.email)
        _second, second_token = services.invitation_create(actor=alice, organization=acme, email=bob.email)
    browser = sign_in(Client(), bob.email)
    assert "withdrawn" in browser.post(f"/accounts/invitations/{first_token}/").content.decode()
    with rls.privileged(reason="test"):
        services.invitation_revoke(actor=alice, invitation=services.invitation_for_token(token=second_token))
    assert "withdrawn" in browser.post(f"/accounts/invitations/{second_token}/").content.decode()


def test_held_reset_for_an_unknown_address_answers_like_a_known_one_and_mails_nothing(client, alice):
    known = client.post("/accounts/password-reset/", {"email": alice.email})
    mail.outbox.clear()
    unknown = Client().post("/accounts/password-reset/", {"email": "nobody@example.com"})
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])
    assert mail.outbox == []


def test_share_links_answered_by_the_api_point_at_the_site_not_the_requests_host(settings, alice):
    """A share link's URL, which its owner pastes anywhere, names the site (SITE_URL), as mailed links do."""
    from chat import services as chat_services

    settings.ALLOWED_HOSTS = ["confab.example.com", "confab-internal.example.net"]
    settings.SITE_URL = "https://confab.example.com"
    conversation = chat_services.conversation_create(user=alice, title="Tides")
    browser = session_client(alice)
    browser.defaults["HTTP_HOST"] = "confab-internal.example.net"
    created = browser.post(f"{API}/conversations/{conversation.pk}/shares", {}, format="json")
    assert created.status_code == 201 and created.json()["url"].startswith("https://confab.example.com/s/")
