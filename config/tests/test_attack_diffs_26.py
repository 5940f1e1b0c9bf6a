"""Attack review of round 26's own changes (f8e08f3..HEAD): what each change broke that worked
before, what it missed that its own reasoning covers, which legitimate path it now refuses.
Each test's docstring: what is done, what happens now ("Was: ..."), what should ("Should: ...")."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import User
from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from chat.models import MAX_TAG_LENGTH, Conversation
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
CHAT = ("chat:read", "chat:write")


def _zone(user: User, name: str) -> None:
    with rls.privileged(reason="test: the user's time zone"):
        User.objects.filter(pk=user.pk).update(timezone=name)


# --- 1. UserTimeZoneMiddleware: the staff dashboard's hourly API chart in a half-hour zone ----------


def test_the_staff_dashboards_api_hours_count_requests_for_staff_in_a_half_hour_zone(client):
    """A staff member's profile time zone is Asia/Kolkata (UTC+05:30). The API answered 6 requests
    in the last hours, 2 of them 500s. They open /usage/staff/. Since UserTimeZoneMiddleware, the
    page runs under their zone, so staff_usage_overview's TruncHour("created_at") buckets the API
    log by Kolkata hours, which start at :30 UTC, while the 25 hours it lays out (and looks the
    buckets up by) start on the UTC hour: no bucket is ever found.
    Was: the page says 0 requests, 0 server errors, an error rate of 0 % and an empty chart (the
    same page for a staff member in UTC, or in New York, shows them all).
    Should: the API's last 24 hours count every request whatever the reader's zone (truncate in UTC,
    or lay out the hours in the zone the buckets were made in)."""
    from analytics.models import ApiLog

    staff = make_user(email="ops@example.com", role="staff", is_superuser=True)
    _zone(staff, "Asia/Kolkata")
    now = timezone.now()
    with rls.privileged(reason="test: API log rows"):
        for minutes, status in ((5, 200), (20, 200), (50, 201), (70, 404), (130, 500), (200, 500)):
            ApiLog.objects.create(
                request_uuid=uuid.uuid4(),
                route="/api/v1/me",
                method="GET",
                status=status,
                duration_ms=9,
                created_at=now - timedelta(minutes=minutes),
            )
    client.force_login(staff)
    response = client.get("/usage/staff/")
    assert response.status_code == 200
    api = response.context["overview"]["api"]
    assert (api["requests"], api["server_errors"]) == (6, 2), (
        f"the staff page in Kolkata counts {api['requests']} requests, {api['server_errors']} 500s"
    )


# --- 2. tags_kept: NFC lengthens a tag past MAX_TAG_LENGTH after the length was checked ---------------

# Composition exclusions: NFC writes each as two code points (क़ is क + the nukta sign, שׁ is ש + the shin dot).
LONG_IN_NFC = "\u0958" * MAX_TAG_LENGTH


def test_a_tag_the_api_accepted_and_stored_can_be_sent_back_and_looked_up():
    """Alice creates a conversation through the API with a Hindi tag of 40 characters written with
    the precomposed "क़" (U+0958, as some keyboards and older texts have it): 40 is the limit, so it
    is taken. ConversationIn.validate_tags (tags_kept) then brings it to NFC, where each U+0958 is
    two code points: the stored tag is 80 characters, past MAX_TAG_LENGTH, which nothing checks
    again. She then sends the conversation's tags back unchanged (PATCH with what GET answered), and
    looks the tag up with ?tag=.
    Was: the stored tag is 80 characters; the PATCH of the tags the API itself answered is a 400
    ("no more than 40 characters") and so is ?tag= with it: a tag that can be neither kept on an
    edit nor found (the page's form refuses it the same way, and an export's import cuts it in half).
    Should: the limit holds on the tag as stored (checked after normalizing: a 400 for this one, or
    counted so that what is stored is what can be sent back), never a stored tag the API refuses."""
    alice = make_user(email="alice@example.com")
    client = key_client(alice, scopes=CHAT)
    created = client.post(f"{API}/conversations", {"title": "Hindi", "tags": [LONG_IN_NFC]}, format="json")
    if created.status_code == 400:
        return  # refused up front: what should happen
    assert created.status_code == 201, created.content
    stored = created.json()["tags"]
    sent_back = client.patch(f"{API}/conversations/{created.json()['id']}", {"tags": stored}, format="json")
    found = client.get(f"{API}/conversations", {"tag": stored[0]})
    assert [len(t) for t in stored] == [MAX_TAG_LENGTH] and sent_back.status_code == 200 and found.status_code == 200, (
        f"stored tag of {[len(t) for t in stored]} characters (limit {MAX_TAG_LENGTH}); PATCH of the same tags: "
        f"{sent_back.status_code}; ?tag= with it: {found.status_code}"
    )


def test_the_conversation_page_keeps_no_tag_longer_than_its_limit(client):
    """The same tag through the conversation page's form (ConversationForm.clean_tags): each tag's
    length is checked, then tags_kept normalizes. Was: an 80-character tag is stored from a form
    that says "A tag is at most 40 characters", and the next save of the same page (its tags field
    filled with the stored tags) is refused with that very message. Should: the check is on the
    tag as stored."""
    from chat.forms import ConversationForm

    alice = make_user(email="alice@example.com")
    form = ConversationForm({"title": "Hindi", "tags": LONG_IN_NFC}, user=alice)
    if not form.is_valid():
        return  # refused: what should happen
    tags = form.cleaned_data["tags"]
    assert all(len(t) <= MAX_TAG_LENGTH for t in tags), f"the page's form keeps a tag of {[len(t) for t in tags]} characters"
    again = ConversationForm({"title": "Hindi", "tags": ", ".join(tags)}, user=alice)
    assert again.is_valid(), f"the same page saved again with its stored tags: {again.errors}"


# --- 3. auto_join_domain_spelled lowercases before IDNA: a final capital sigma is another domain ------


def test_an_owner_can_set_the_auto_join_domain_as_their_email_spells_it_in_capitals():
    """Dimitris signs up as boss@ΑΘΗΝΑΣ-news.test (typed in capitals, as Greek is often written); the
    address is stored with its domain in its one IDNA spelling, "αθηνασ-news.test" (normalize_email
    spells it "as typed, not lowercased first: Python lowercases a final capital Σ to ς, another
    domain"). He confirms it and, in his organization's settings, sets the auto-join domain the way
    he typed his address. auto_join_domain_spelled lowercases first, and then spells: "αθηνας-news.test",
    with a final ς, another domain.
    Was: refused, "You can only set the domain of your own verified email address (αθηνασ-news.test)"
    — the domain he typed, as his own email was read.
    Should: the domain is spelled as emails are (IDNA first, which maps capitals itself), so his own
    domain is taken."""
    owner = make_user(email="boss@ΑΘΗΝΑΣ-news.test")
    assert owner.email == "boss@αθηνασ-news.test"
    owner = account_services.email_verify(token=account_services.email_verification_token(user=owner))
    with rls.privileged(reason="test: create organization"):
        organization = account_services.organization_create(user=owner, name="Athens News")
    with rls.privileged(reason="test: configure domain"):
        account_services.organization_update(actor=owner, organization=organization, auto_join_domain="ΑΘΗΝΑΣ-news.test")
    assert organization.auto_join_domain == "αθηνασ-news.test"


# --- 4. The import's tags: cut after title_clean's "shows nothing" check, normalized after the cut -----


def _ours(tags: list) -> bytes:
    import json

    item = {
        "id": "c1",
        "title": "Tagged",
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "tags": tags,
        "messages": [{"sequence": 1, "role": "user", "content": "Hello there", "created_at": "2026-01-01T00:00:00+00:00"}],
    }
    return json.dumps({"format": "confab.conversations", "version": 1, "conversations": [item]}).encode()


@pytest.mark.parametrize(
    ("what", "tag"),
    [
        ("forty zero-width spaces, then a word", "\u200b" * MAX_TAG_LENGTH + "work"),
        ("forty variation selectors, then a word", "\ufe0f" * MAX_TAG_LENGTH + "work"),
        ("forty precomposed letters NFC writes as two", LONG_IN_NFC),
    ],
    ids=["zero-width", "variation-selectors", "nfc-longer"],
)
def test_an_imports_tags_are_what_the_api_and_the_page_would_store(what, tag):
    """Alice imports a Confab export (hand-edited, or from another tool) whose conversation has a
    tag of `what`. chat.porting.ours keeps `title_clean(tag)[:MAX_TAG_LENGTH].rstrip()`, then
    tags_kept: title_clean's "shows nothing" check sees the whole tag (with its word), the cut comes
    after it, and the NFC of tags_kept after the cut.
    Was: the conversation keeps a tag of only zero-width characters (or of only variation
    selectors: what round 26 made "shows nothing"), which the API and the page refuse ("This shows
    nothing") and which draws as an empty, unclickable tag; or a tag of 80 characters, past the limit,
    which the API refuses when sent back. ("a tag that shows nothing is dropped", says the importer.)
    Should: a tag that shows nothing once cut is dropped, and the limit holds on the tag as stored."""
    import io

    from accounts.models import shows_nothing
    from chat.porting.importer import conversations_import

    alice = make_user(email="alice@example.com")
    report = conversations_import(user=alice, file=io.BytesIO(_ours([tag, "travel"])))
    assert report.imported == 1
    with rls.privileged(reason="test: the imported conversation"):
        tags = Conversation.objects.get(user_id=alice.pk, imported_from="confab").tags
    bad = [t for t in tags if shows_nothing(t) or len(t) > MAX_TAG_LENGTH]
    assert not bad, f"stored tags that the API refuses: {[(repr(t[:6]), len(t)) for t in bad]}"
