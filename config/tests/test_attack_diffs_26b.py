"""Attack review of the latest of round 26's changes (24e2c25..HEAD), a second look: what each change
broke, what it missed that its own reasoning covers, which legitimate path it now refuses.
Each test's docstring: what is done, what happens now ("Was: ..."), what should ("Should: ...")."""

from __future__ import annotations

import unicodedata

import pytest

from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from chat.forms import ConversationForm
from chat.models import MAX_TAG_LENGTH

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
CHAT = ("chat:read", "chat:write")

# 30 letters, 11 of them accented, as macOS pastes them (NFD: each accent a combining mark):
# 41 code points as sent, 30 as stored (NFC), well under the 40-character limit.
PASTED = unicodedata.normalize("NFD", "café résumé naïve éèàùâêîôûçë"[:30].ljust(30, "x"))
STORED = unicodedata.normalize("NFC", PASTED)


def test_the_api_takes_a_pasted_tag_the_page_takes_whose_stored_length_is_within_the_limit():
    """Alice pastes a tag from macOS (combining accents, NFD): it is 30 characters as stored (NFC),
    but more than 40 code points as sent. The conversation page (ConversationForm.clean_tags) now
    checks the length once composed and takes it. The API's ConversationIn.tags child (TAG,
    StringField(max_length=MAX_TAG_LENGTH)) still checks the raw length before validate_tags
    composes it.
    Was: the API answers 400 "Ensure this field has no more than 40 characters" for a tag it would
    store as 30 characters, one the page saves without complaint (the change said the length is
    checked once composed "in the API, the page and the import").
    Should: the API checks the composed length only (as the page does): a 201 with the tag stored."""
    assert len(PASTED) > MAX_TAG_LENGTH >= len(STORED), (len(PASTED), len(STORED))
    alice = make_user(email="alice@example.com")
    form = ConversationForm({"title": "Trip", "tags": PASTED}, user=alice)
    assert form.is_valid() and form.cleaned_data["tags"] == [STORED], form.errors  # the page takes it
    client = key_client(alice, scopes=CHAT)
    response = client.post(f"{API}/conversations", {"title": "Trip", "tags": [PASTED]}, format="json")
    assert response.status_code == 201, f"the API refuses the tag the page takes: {response.status_code} {response.content[:300]!r}"
    assert response.json()["tags"] == [STORED]


def test_the_tag_filter_takes_the_pasted_spelling_of_a_stored_tag():
    """Alice has a conversation tagged with a 30-character accented tag. She filters her list by
    the same tag pasted from macOS (NFD, more than 40 code points): `?tag=` goes through
    ConversationFilter.tag (CharField(max_length=MAX_TAG_LENGTH)) before the selector composes it
    (tags_kept), so "a tag pasted with a combining accent is the tag typed" (README) stops at 40 code
    points.
    Was: a 400 "Ensure this field has no more than 40 characters" for a tag she has.
    Should: the length is checked once composed; the filter finds the conversation."""
    alice = make_user(email="alice@example.com")
    client = key_client(alice, scopes=CHAT)
    created = client.post(f"{API}/conversations", {"title": "Trip", "tags": [STORED]}, format="json")
    assert created.status_code == 201, created.content
    response = client.get(f"{API}/conversations", {"tag": PASTED})
    assert response.status_code == 200, f"the filter by the pasted tag: {response.status_code} {response.content[:300]!r}"
    assert [c["id"] for c in response.json()["results"]] == [created.json()["id"]]


# --- each_saved: unproven_access_revoked locks the keys after the user's row ------------------------


def test_a_password_reset_of_an_unconfirmed_account_and_a_key_minting_a_key_do_not_deadlock(monkeypatch):
    """Alice's account never confirmed its address; whoever opened it holds an API key and asks it
    for a new key (POST /api-keys with the key: api_key_create holds the calling key FOR SHARE,
    then the user's row, "a key before its user, as user_deactivate locks them"). Meanwhile the
    address's owner completes a password reset: PasswordResetConfirmView's request transaction
    updates the user's row (the new password), then unproven_access_revoked, now each_saved, locks
    the keys FOR UPDATE: the user's row, then the keys, the order user_deactivate's comment says
    "deadlocked" and fixed there only (each_saved's docstring: "in id order, the order every other
    path locks them").
    Was: PostgreSQL detects the deadlock and aborts one side: a 500 (the reset's, rolled back, or the
    minting's).
    Should: no 500 on either side: the reset locks the keys before the user's row (as
    user_deactivate does), so one waits for the other; the reset answers 302 and the old holder's
    keys, the minted one included, end revoked."""

    from django.contrib.auth.tokens import default_token_generator
    from django.test import Client
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    from accounts.models import ApiKey, User
    from accounts.services import api_keys as api_key_services
    from config.db import rls
    from config.tests.races import Paused, hold_in_thread, until, waiting_locks

    alice = make_user(email="alice@example.com")
    with rls.privileged(reason="test: an unconfirmed account"):
        User.objects.filter(pk=alice.pk).update(email_verified=False)
        alice = User.objects.get(pk=alice.pk)
    holder = key_client(alice)
    holder.raise_request_exception = False
    owner = Client(raise_request_exception=False)
    link = f"/accounts/password-reset/{urlsafe_base64_encode(force_bytes(alice.pk))}/{default_token_generator.make_token(alice)}/"
    form_url = owner.get(link)["Location"]

    reached, release = hold_in_thread(monkeypatch, api_key_services, "user_held_active", "mint", after=False)
    mint = Paused(lambda: holder.post(f"{API}/api-keys", {"name": "fresh", "scopes": ["account:read"]}, format="json"), "mint")
    mint.start()
    assert reached.wait(60), "the minting never held its key"
    new = "a-brand-new-passphrase-42"
    reset = Paused(lambda: owner.post(form_url, {"new_password1": new, "new_password2": new}), "reset")
    reset.start()
    until(lambda: waiting_locks() > 0 or not reset.is_alive(), "the reset waits for the minting's key, or is done")
    release.set()
    mint.join(60), reset.join(60)
    outcomes = {
        "reset": getattr(reset.result, "status_code", repr(reset.result)),
        "mint": getattr(mint.result, "status_code", repr(mint.result)),
    }
    assert outcomes["reset"] == 302 and outcomes["mint"] in (201, 401, 403), f"a deadlock: {outcomes}"
    with rls.privileged(reason="test: the keys"):
        assert not ApiKey.objects.filter(user_id=alice.pk, is_active=True).exists()
