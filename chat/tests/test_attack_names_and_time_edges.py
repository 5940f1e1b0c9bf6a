"""Names and text at their edges, and time at its edges (an attacker's and a careless user's review,
round 26): invisible-only names that escape the "shows nothing" rule, tags the product keeps "each
once" but an import stores twice, canonically equal text (NFC and NFD) that a lookup by tag cannot
find, an auto-join domain no owner at an internationalized domain can ever set, a model id the
gateway lists that routes to another model, and an API key's "end of this day" on a day whose last
hour happens twice, and as the keys page shows it. Real PostgreSQL and Redis; each test failed on
the code it was written against."""

import io
import json
import unicodedata
from datetime import UTC, date, datetime

import pytest

from accounts import services as account_services
from accounts.models import Membership, User
from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from chat.models import Conversation
from chat.porting.importer import conversations_import
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
CHAT = ("chat:read", "chat:write")
ACCOUNT = ("account:read", "account:write")


def _ours(*conversations: dict) -> bytes:
    """A Confab-format export file holding these conversations (each with one user message)."""
    items = []
    for n, extra in enumerate(conversations, start=1):
        items.append(
            {
                "id": f"c{n}",
                "title": f"Conversation {n}",
                "created_at": "2026-01-01T00:00:00+00:00",
                "updated_at": "2026-01-01T00:00:00+00:00",
                "messages": [{"sequence": 1, "role": "user", "content": "Hello there", "created_at": "2026-01-01T00:00:00+00:00"}],
                **extra,
            }
        )
    return json.dumps({"format": "confab.conversations", "version": 1, "conversations": items}).encode()


def _imported(user) -> list[Conversation]:
    with rls.privileged(reason="test: read the imported conversations"):
        return list(Conversation.objects.filter(user_id=user.pk, imported_from="confab").order_by("external_id"))


# --- 1. Names of only variation selectors (or a grapheme joiner) show nothing, and are taken --------

# Each is a combining mark (category Mn) that draws nothing on its own: the emoji and text
# variation selectors, the combining grapheme joiner, Khmer's two inherent vowels. shows_nothing
# (accounts.models) lists zero-width spaces, joiners, fillers and spaces, but none of these.
NOTHING = "\ufe0f\ufe0f\u034f"


@pytest.mark.parametrize(
    ("door", "scopes", "method", "path", "body"),
    [
        ("persona name", CHAT, "post", "/personas", {"name": NOTHING, "system_prompt": "Be brief."}),
        ("conversation title", CHAT, "post", "/conversations", {"title": NOTHING}),
        ("conversation tag", CHAT, "post", "/conversations", {"title": "ok", "tags": ["work", "\u17b4\u17b5"]}),
        ("organization name", ACCOUNT, "post", "/organizations", {"name": NOTHING}),
        ("API key name", ACCOUNT, "post", "/api-keys", {"name": NOTHING, "scopes": ["account:read"]}),
        ("display name", ACCOUNT, "patch", "/me", {"display_name": NOTHING}),
    ],
)
def test_a_name_of_only_variation_selectors_is_refused_as_showing_nothing(alice, door, scopes, method, path, body):
    """Alice names a persona, a conversation, a tag, an organization, an API key or herself with
    U+FE0F U+FE0F U+034F (or Khmer's U+17B4 U+17B5): characters that draw nothing on any page, a
    menu entry, badge or member row no one can see or click. Was: 201/200, stored, because
    accounts.models.shows_nothing only knows the Cf/Zs/Cc categories and five fillers, and these
    are combining marks (Mn). Should: a 400 saying the name shows nothing, as for U+200B U+2060."""
    client = key_client(alice, scopes=scopes)
    response = getattr(client, method)(f"{API}{path}", body, format="json")
    assert response.status_code == 400, f"{door} of invisible marks only: {response.status_code} {response.content[:200]!r}"
    assert "shows nothing" in response.json()["message"] + json.dumps(response.json()["extra"])


# --- 2. "Each tag once": an import stores the same tag twice -----------------------------------------


def test_an_import_keeps_each_tag_once_as_the_page_and_the_api_do(alice):
    """A Confab export file (hand-edited, or written by another tool) gives a conversation the tags
    ["work", "work ", " work", "travel"]. The API keeps each tag once ("Each tag once, in the order
    given, as the conversation page keeps them": ConversationIn.validate_tags) after trimming, and so
    does the page (ConversationForm.clean_tags); chat.models says what a user may store is the same
    through the pages, the API and an import. Was: the import trims and cleans each tag
    (title_clean) but never drops repeats: the conversation has "work" three times, shown three
    times, and the first save of its page quietly changes its tags. Should: ["work", "travel"]."""
    report = conversations_import(user=alice, file=io.BytesIO(_ours({"tags": ["work", "work ", " work", "travel"]})))
    assert report.imported == 1
    (conversation,) = _imported(alice)
    assert conversation.tags == ["work", "travel"]


# --- 3. Canonically equal text: a tag typed in NFC does not find the same tag stored in NFD -------


def test_a_tag_filter_finds_a_tag_however_its_accents_are_encoded(alice):
    """A conversation is tagged "café" as macOS pastes it (NFD: "e" + U+0301 combining acute, what
    its file names and many clipboards carry, and what an import file may hold), and Alice, typing
    "café" on a keyboard (NFC: one "é"), asks GET /api/v1/conversations?tag=café, or clicks the tag
    she typed on another conversation. The two spellings are canonically equivalent (Unicode: the
    same text) and draw identically. Was: the filter compares code points (tags @> '["café"]') and
    finds nothing; the same conversation given both spellings keeps "café" twice, side by side.
    Should: tags (and names, titles) are normalized to NFC when stored and when looked up, so the
    tag is found, and kept once."""
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    client = key_client(alice, scopes=CHAT)
    created = client.post(f"{API}/conversations", {"title": "Paris", "tags": [nfd]}, format="json")
    assert created.status_code == 201, created.content
    found = client.get(f"{API}/conversations", {"tag": nfc})
    assert found.status_code == 200
    assert [c["id"] for c in found.json()["results"]] == [created.json()["id"]], "a tag typed as café does not find café"


# --- 4. Auto-join can never be set for an internationalized domain ---------------------------------


def _verified(user: User) -> User:
    return account_services.email_verify(token=account_services.email_verification_token(user=user))


def test_an_owner_at_an_internationalized_domain_can_turn_on_auto_join_for_it():
    """The owner of "Bücher GmbH" signs up as boss@bücher.test and confirms it (stored in its one
    IDNA 2008 spelling, "bücher.test", as the README says). In the organization's settings they
    set the auto-join domain. Was: "bücher.test" is refused as "Enter a domain like example.com"
    (auto_join_domain_problem's pattern is ASCII only), and its punycode spelling
    "xn--bcher-kva.test" as "You can only set the domain of your own verified email address
    (bücher.test)" — the very value just refused. No owner at an internationalized domain can ever
    use auto-join. Should: either spelling is taken (stored as the emails are, so the database's
    join rule matches), and a colleague who confirms ann@bücher.test joins."""
    owner = _verified(make_user(email="boss@bücher.test"))
    assert owner.email == "boss@bücher.test"
    with rls.privileged(reason="test: create organization"):
        organization = account_services.organization_create(user=owner, name="Bücher GmbH")
    problems = []
    for spelling in ("bücher.test", "xn--bcher-kva.test"):
        try:
            with rls.privileged(reason="test: configure domain"):
                account_services.organization_update(actor=owner, organization=organization, auto_join_domain=spelling)
            break
        except Exception as exc:  # noqa: BLE001 - the refusal is what is being reported
            problems.append(f"{spelling}: {getattr(exc, 'message', exc)}")
    assert len(problems) < 2, f"both spellings refused: {problems}"
    _verified(make_user(email="ann@bücher.test"))
    joined = Membership.objects.using("privileged").filter(organization=organization, user__email="ann@bücher.test").exists()
    assert joined


# --- 5. "The key stops working at the end of this day": a day whose last hour happens twice --------


def test_an_api_key_expiring_on_a_day_whose_last_hour_repeats_works_until_that_day_ends():
    """Alice's time zone is Africa/Cairo. Egypt's summer time ends at 24:00 on the last Thursday of
    October: the clock goes back to 23:00, so that Thursday's last hour happens twice and the day
    ends at 22:00 UTC. She creates a key on Settings → API keys expiring on Thursday 28 October
    2027 ("The key stops working at the end of this day."). Was: ApiKeyCreateForm builds 23:59:59
    with fold=0, the FIRST 23:59:59 (summer time, 20:59:59 UTC): the key dies an hour before her
    day ends. Should: the key works until the day's real end (the second 23:59:59, 21:59:59 UTC)."""
    from accounts.forms import ApiKeyCreateForm

    day = date(2027, 10, 28)
    form = ApiKeyCreateForm({"name": "k", "scopes": ["chat:read"], "expires_at": day.isoformat()}, user_timezone="Africa/Cairo")
    assert form.is_valid(), form.errors
    expires = form.cleaned_data["expires_at"].astimezone(UTC)
    assert expires >= datetime(2027, 10, 28, 21, 59, 59, tzinfo=UTC), f"expires at {expires:%H:%M:%S} UTC; the day ends at 22:00 UTC"


# --- 6. The gateway routes a model id /v1/models lists to another model ---------------------------


def test_a_model_id_the_gateway_lists_routes_to_that_model_not_another(alice):
    """Staff add OpenRouter's "openai/gpt-4o-mini" to the catalog under the OpenAI-compatible
    provider (its id there, with its own price), for members whose provider key points at
    OpenRouter; the seeded catalog already has OpenAI's own "gpt-4o-mini". GET /v1/models lists both
    ids, "gpt-4o-mini" and "openai/gpt-4o-mini" (each name is in one provider's catalog only). A
    client asks for "openai/gpt-4o-mini", the id it was given. Was: chat.gateway.model_route first
    reads any "<provider>/<rest>" as a provider prefix and, "gpt-4o-mini" being priced under openai,
    routes to THAT model: the wrong model is sent to the provider and the call is priced at the
    other entry's price. Should: an id the listing gives routes back to the entry it names (an
    exact catalog name first; the provider prefix only for names /v1/models spells that way)."""
    from chat import gateway
    from chat.tests.factories import price_add

    price_add(provider="openai", model="openai/gpt-4o-mini", input_price="0.30", output_price="1.20")
    listed = key_client(alice, scopes=CHAT).get("/v1/models")
    assert listed.status_code == 200, listed.content
    ids = {m["id"] for m in listed.json()["data"]}
    assert {"gpt-4o-mini", "openai/gpt-4o-mini"} <= ids
    assert gateway.model_route("openai/gpt-4o-mini") == ("openai", "openai/gpt-4o-mini")


# --- 7. The API keys page shows the expiry day in UTC, not the day the user chose ------------------


def test_the_api_keys_page_shows_the_expiry_day_the_user_chose_in_their_zone(client):
    """Dan's time zone (Settings → Profile) is America/New_York. On Settings → API keys he creates a
    key "Expires on" 31 December 2027; the form rightly makes it 23:59:59 that day in New York
    (04:59:59 on 1 January 2028 in UTC). The page then lists his keys. Was: the row renders
    `expires_at|date:"j M Y"` in the server's zone (UTC), so the key he just set to expire on
    31 Dec 2027 is listed as expiring "1 Jan 2028", a day (and, here, a year) later than he chose,
    and every key made west of UTC shows the day after its real last day. Should: the day he chose,
    "31 Dec 2027" (rendered in his zone, or with the zone named)."""
    from accounts.tests.test_pages import sign_in

    dan = make_user(email="dan@example.com")
    with rls.privileged(reason="test: Dan's time zone"):
        User.objects.filter(pk=dan.pk).update(timezone="America/New_York")
    sign_in(client, dan.email)
    created = client.post("/settings/api-keys/", {"name": "year-end", "scopes": ["chat:read"], "expires_at": "2027-12-31"})
    assert created.status_code == 200, created.content[:500]
    page = client.get("/settings/api-keys/").content.decode()
    assert "year-end" in page
    row = page[page.index("year-end") : page.index("year-end") + 600]
    assert "31 Dec 2027" in row and "1 Jan 2028" not in row, f"the key's row: {' '.join(row.split())[:300]}"
    # The API answers in UTC whoever asks, with a session of his as with a key.
    with rls.privileged(reason="test: a conversation of Dan's"):
        from chat import services as chat_services

        chat_services.conversation_create(user=dan, title="Dated")
    listed = client.get(f"{API}/conversations").json()["results"]
    assert listed and all(c["created_at"].endswith("Z") for c in listed), listed


def test_stored_tags_take_their_composed_form_once():
    """chat 0016 brings tags stored before tags_kept to its form: NFC, each once (a conversation
    tagged "café" both ways keeps one), others left as they are; its reverse keeps them."""
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    alice = make_user(email="alice@example.com")
    with rls.privileged(reason="test: a conversation of Alice's"):
        from chat import services as chat_services

        conversation = chat_services.conversation_create(user=alice, title="Paris")
        plain = chat_services.conversation_create(user=alice, title="Plain", tags=["work"])
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    leaves = MigrationExecutor(connections["owner"]).loader.graph.leaf_nodes()
    MigrationExecutor(connections["owner"]).migrate([("chat", "0015_writes_only_in_own_organizations")])
    try:
        with connections["owner"].cursor() as cur:
            cur.execute("UPDATE chat_conversation SET tags = %s::jsonb WHERE id = %s", [json.dumps([nfd, "x", nfc]), conversation.pk])
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaves)
    with rls.privileged(reason="test: the tags as stored"):
        assert Conversation.objects.get(pk=conversation.pk).tags == [nfc, "x"]
        assert Conversation.objects.get(pk=plain.pk).tags == ["work"]
