"""Accounts as an attacker finds them (review of 2026-12-02): email normalization that makes an
address longer than its column (a 500) or misses its punycode spelling (a second account for
one mailbox), and provider base URLs with a port no connection can use. Each test here failed
before its fix."""

import pytest
from django.core.mail.message import sanitize_address
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from accounts import services
from accounts.models import Invitation, ProviderCredential, User
from accounts.tests.factories import PASSWORD, mail_arrives, make_user
from accounts.tests.test_api import API, OPENAI_KEY, key_client, privileged, session_client
from config.db import rls
from config.tests.test_attack_review_today import _no_raise

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def accounts_migrations_restored():
    """A test that takes accounts' migrations back leaves every one applied again."""
    leaves = [key for key in MigrationExecutor(connections["owner"]).loader.graph.leaf_nodes() if key[0] == "accounts"]
    yield
    MigrationExecutor(connections["owner"]).migrate(leaves)


# 97 characters, a valid address to Django's EmailValidator (and under every 254 limit); IDNA's
# nameprep maps each U+FB03 (LATIN SMALL LIGATURE FFI) to "ffi", so normalize_email makes it 265.
LIGATURE_EMAIL = "alice@" + ".".join(["\ufb03" * 21] * 4) + ".com"


def test_signup_with_an_address_that_normalizes_longer_than_the_column_is_a_form_error_not_a_500():
    """Someone signs up with LIGATURE_EMAIL (97 characters: the form's 254 limit passes it).
    UserManager.normalize_email (accounts/models.py) runs the domain through IDNA, which maps each
    ligature to three letters: 265 characters go to the 254-character email column, and the insert
    fails (DataError, a 500). It should be a form error on the email field (400), nothing saved."""
    client = Client(raise_request_exception=False)
    response = client.post(
        "/accounts/signup/", {"email": LIGATURE_EMAIL, "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 400, f"sign-up answered {response.status_code}"
    assert privileged(User).count() == 0


def test_inviting_an_address_that_normalizes_longer_than_the_column_is_400_not_500(alice):
    """An owner invites LIGATURE_EMAIL through the API: the serializer's 254 limit passes it,
    invitation_create normalizes it to 265 characters and the insert into the 254-character
    invitation email column fails (a 500). It should be a 400 naming the email, nothing saved."""
    with rls.privileged(reason="test"):
        acme = services.organization_create(user=alice, name="Acme")
    response = _no_raise(session_client(alice)).post(f"{API}/organizations/{acme.pk}/invitations", {"email": LIGATURE_EMAIL}, format="json")
    assert response.status_code == 400, f"the invitation answered {response.status_code}"
    assert not privileged(Invitation).filter(organization=acme).exists()


def test_signup_with_the_punycode_spelling_of_a_taken_email_does_not_open_a_second_account():
    """alice@bücher.com has an account. Someone signs up as alice@xn--bcher-kva.com: the same
    mailbox (mail to either spelling goes out punycoded, to the same domain), shown alike in member
    lists. normalize_email maps a non-ASCII domain to its one IDNA spelling but leaves an ASCII
    (punycode) domain as typed, so a second account opens for Alice's address. It should be refused
    as taken (400), as the fullwidth and soft-hyphen spellings already are."""
    make_user(email="alice@b\u00fccher.com")
    client = Client()
    response = client.post(
        "/accounts/signup/", {"email": "alice@xn--bcher-kva.com", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    emails = list(privileged(User).values_list("email", flat=True))
    assert len(emails) == 1, f"a second account for Alice's mailbox was opened: {emails}"
    assert response.status_code == 400


def test_a_base_url_with_a_port_no_connection_can_use_is_refused_on_save(alice, settings):
    """A user saves an OpenAI-compatible base URL with port 99999 (URLValidator takes any five
    digits). It is stored (201), and every send then fails inside the socket layer (port must be
    0-65535): chat logs "provider call failed unexpectedly" with an exception group, the crash
    test_attack_outbound forbids for a host that does not resolve. It should be refused when saved:
    a 400 naming base_url, nothing stored."""
    settings.OUTBOUND_ALLOWED_HOSTS = []
    client = _no_raise(key_client(alice))
    response = client.post(
        f"{API}/provider-credentials",
        {"provider": "openai", "api_key": OPENAI_KEY, "base_url": "http://93.184.216.34:99999/v1"},
        format="json",
    )
    assert response.status_code == 400, f"saved with {response.status_code}: {response.json()}"
    assert not privileged(ProviderCredential).filter(user=alice).exists()


def test_accounts_stored_under_a_punycode_email_keep_signing_in_after_the_migration(accounts_migrations_restored):
    """Sign-in now reads a punycode domain as its one spelling, so an account stored under
    `xn--` before would not be found by its own address: accounts 0016 rewrites it (and pending
    invitations), unless the other spelling has an account already (left as it is)."""
    from accounts.backends import user_id_for_login

    stored = make_user(email="bob@example.com")
    pair = make_user(email="carol@bücher.com")
    executor = MigrationExecutor(connections["owner"])
    executor.migrate([("accounts", "0015_api_key_changed_notify_always")])
    try:
        with connections["owner"].cursor() as cur:
            cur.execute("UPDATE accounts_user SET email = 'bob@xn--bcher-kva.com' WHERE id = %s", [stored.pk])
            cur.execute(
                "UPDATE accounts_user SET email = 'carol@xn--bcher-kva.com' WHERE id = %s", [make_user(email="carol2@example.com").pk]
            )
    finally:
        executor = MigrationExecutor(connections["owner"])
        executor.migrate([("accounts", "0016_punycode_emails_one_spelling")])
    emails = dict(privileged(User).filter(email__contains="@").values_list("email", "id"))
    assert emails["bob@bücher.com"] == stored.pk
    assert "carol@xn--bcher-kva.com" in emails and emails["carol@bücher.com"] == pair.pk  # both spellings had accounts: left
    assert user_id_for_login("bob@xn--bcher-kva.com") == user_id_for_login("bob@bücher.com") == stored.pk


def test_an_eszett_domain_is_not_turned_into_another_domain(alice):
    """Someone signs up as anna@straße.de. Since IDNA 2008 (DENIC, 2010) straße.de
    (xn--strae-oqa.de) and strasse.de are two domains with two owners. normalize_email spells
    the domain with Python's IDNA 2003 codec, which maps ß to ss: the account is stored as
    anna@strasse.de, its confirmation and password-reset mails go to the other domain's owner
    (who can reset the password and take the account), and anna@strasse.de can never open an
    account of their own (EmailTaken). It should keep the domain as mail delivers to it
    (UTS 46 non-transitional, as the `idna` package does: `idna.encode(d, uts46=True)`)."""
    with rls.privileged(reason="test"):
        user = services.user_create(email="anna@straße.de", password=PASSWORD)
    assert user.email.rpartition("@")[2] != "strasse.de", f"anna@straße.de was stored as {user.email}"
    with rls.privileged(reason="test"):
        services.user_create(email="anna@strasse.de", password=PASSWORD)  # another person's mailbox


def test_an_eszett_domain_gets_its_mail_not_the_other_domain(celery_worker):
    """anna@straße.de signs up and is stored as such; Django's mail spells a recipient's domain with
    Python's IDNA 2003 codec too (django.core.mail.message.sanitize_address), so her confirmation
    mail would still go to anna@strasse.de, whose owner confirms the account and resets its
    password. The mail should be addressed to straße.de's own punycode, xn--strae-oqa.de."""
    client = Client()
    response = client.post(
        "/accounts/signup/", {"email": "anna@straße.de", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 302, response.content[:500]
    [sent] = mail_arrives()
    assert [sanitize_address(to, "utf-8") for to in sent.recipients()] == ["anna@xn--strae-oqa.de"]


def test_a_domain_idna_2008_cannot_spell_is_refused_not_stored_as_a_lookalike():
    """alice@exa\\u200dmple.com (a zero-width joiner inside a word) is no domain IDNA 2008 spells: it
    is refused at sign-up, not opened as an account that shows as alice@example.com."""
    response = Client().post(
        "/accounts/signup/", {"email": "alice@exa\u200dmple.com", "display_name": "", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert response.status_code == 400
    assert "delivered" in response.context["form"].errors["email"][0]
    assert privileged(User).count() == 0


def test_accounts_stored_under_a_punycode_email_idna_2003_could_not_read_keep_signing_in(accounts_migrations_restored):
    """Python's IDNA 2003 codec could not read `xn--strae-oqa.de` back (it does not round-trip
    through ss), so such an email stayed stored as typed. Sign-in now reads it as `straße.de`: accounts
    0017 rewrites it to that spelling, the same domain its mail went to; `strasse.de` accounts, a
    domain of their own, stay as they are."""
    from accounts.backends import user_id_for_login

    dora, eve = make_user(email="dora@example.com"), make_user(email="eve@strasse.de")
    executor = MigrationExecutor(connections["owner"])
    executor.migrate([("accounts", "0016_punycode_emails_one_spelling")])
    with connections["owner"].cursor() as cur:
        cur.execute("UPDATE accounts_user SET email = 'dora@xn--strae-oqa.de' WHERE id = %s", [dora.pk])
    MigrationExecutor(connections["owner"]).migrate([("accounts", "0017_email_domains_spelled_by_idna_2008")])
    emails = dict(privileged(User).values_list("id", "email"))
    assert (emails[dora.pk], emails[eve.pk]) == ("dora@straße.de", "eve@strasse.de")
    assert user_id_for_login("dora@xn--strae-oqa.de") == user_id_for_login("dora@straße.de") == dora.pk
    assert user_id_for_login("eve@strasse.de") == eve.pk
