"""The README's and docs' promises (README.md, docs/architecture.md, docs/export-format.md) checked
against the running code. Each test's docstring: what is done, what happens now ("Was:"), and what
the docs promise ("Should:")."""

import io
import json

import pytest

from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from billing.tests.factories import make_plans
from chat.porting.importer import conversations_import
from chat.tests.factories import make_catalog

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"
SCOPES = ["chat:read", "chat:write"]


@pytest.fixture
def alice():
    make_catalog()
    make_plans()
    return make_user(email="alice@example.com")


def _without_ids(document: dict) -> dict:
    """What docs/export-format.md lets differ between the two exports: when, and our ids."""
    return {**document, "exported_at": None, "conversations": [{**c, "id": None} for c in document["conversations"]]}


@pytest.mark.parametrize(
    "title, tag",
    [("Q3  report — draft", "new  york"), ("Trip\u00a0plan", "to\u00a0do"), ("Budget\u2003 2027", "a\u2009b")],
    ids=["two spaces", "no-break space", "em and thin space"],
)
def test_an_export_imported_elsewhere_exports_again_with_the_same_titles_and_tags(alice, title, tag):
    """Alice names a conversation through the API with a title and a tag the API accepts as they
    are (two spaces in a row, a no-break space as macOS and Word paste it, an em or thin space),
    sends a message in it, exports it (GET /api/v1/conversations/{id}/export?format=json), and Bob
    imports that file (the importer the upload's task and `import_conversations` run), then exports
    his copy. Was: Bob's copy has another title and tag ("Q3 report — draft", "Trip plan",
    "new york"): the importer runs every title and tag through chat.porting.base.title_clean, which
    `" ".join(value.split())`s them, folding every run of Unicode whitespace into one ASCII space,
    although the API (chat.serializers.ConversationIn: StringField + validate_one_line) stores them
    unfolded. Should: docs/export-format.md: "Export → import into another account → export again
    gives the same document except `exported_at` and each conversation's `id` ... and `persona`"; and
    it says only "control and text-direction characters are removed from titles on import". A
    title or tag Confab itself accepted comes back as it was (fold only what it would refuse)."""
    api = key_client(alice, scopes=SCOPES)
    created = api.post(f"{API}/conversations", {"title": title, "tags": [tag]}, format="json")
    assert created.status_code == 201, created.content
    conversation_id = created.json()["id"]
    assert (created.json()["title"], created.json()["tags"]) == (title, [tag])  # stored as given
    sent = api.post(f"{API}/conversations/{conversation_id}/messages", {"content": "hello there"}, format="json")
    assert sent.status_code == 201, sent.content
    first = api.get(f"{API}/conversations/{conversation_id}/export?format=json")
    assert first.status_code == 200
    document = json.loads(b"".join(first.streaming_content) if first.streaming else first.content)

    bob = make_user(email="bob@example.com")
    report = conversations_import(user=bob, file=io.BytesIO(json.dumps(document).encode()))
    assert (report.imported, report.failed) == (1, [])
    bobs = key_client(bob, scopes=SCOPES)
    listed = bobs.get(f"{API}/conversations").json()["results"]
    again = bobs.get(f"{API}/conversations/{listed[0]['id']}/export?format=json")
    document_again = json.loads(b"".join(again.streaming_content) if again.streaming else again.content)
    kept = document_again["conversations"][0]
    assert (kept["title"], kept["tags"]) == (title, [tag])
    assert _without_ids(document_again) == _without_ids(document)


@pytest.mark.parametrize("value", ["", "null"])
def test_an_empty_archived_filter_is_checked_not_taken_as_no_filter(alice, value):
    """GET /api/v1/conversations?archived= (a client whose flag variable was unset; or `null`), with
    one archived and one active conversation. Was: 200 with both, as if `archived` had not been
    sent: chat.serializers.ConversationFilter declares `archived` as DRF's
    BooleanField(allow_null=True), which reads "" (and "null") as None, the default "no filter"
    (config/api/inputs.validated_query passes the empty value on, but this field takes it as
    absent). `?persona_id=` on the same endpoint is a 400. Should: README ("Pages and API"): "A
    query value given empty (`?persona_id=`, `?period=`) is checked like any other, not taken as
    'the default'": a 400 saying `archived` takes true or false."""
    api = key_client(alice, scopes=SCOPES)
    active = api.post(f"{API}/conversations", {"title": "Active one"}, format="json").json()["id"]
    archived = api.post(f"{API}/conversations", {"title": "Archived one"}, format="json").json()["id"]
    assert api.patch(f"{API}/conversations/{archived}", {"is_archived": True}, format="json").status_code == 200
    assert api.get(f"{API}/conversations?persona_id=").status_code == 400  # the rule, kept by the next filter
    answer = api.get(f"{API}/conversations?archived={value}")
    assert answer.status_code == 400, (answer.status_code, [c["id"] for c in answer.json().get("results", [])], active)
    assert "archived" in answer.json()["message"]


def test_a_share_links_expiry_without_a_time_zone_is_refused_not_read_as_utc(alice):
    """POST /api/v1/conversations/{id}/shares {"audience": "anyone", "expires_at": "<tomorrow
    09:00, no offset>"} (a client in New York meaning its own 09:00). Was: 201, the link expiring
    at 09:00 UTC, five hours before the owner meant: DRF's DateTimeField makes a naive time aware
    in the server's zone (UTC) before chat.sharing.share_link_create sees it, so the service's own
    refusal ("The expiry must be a time in the future, with its time zone.", its
    `timezone.is_naive` check) never runs for an API client. Should: the house rule (time is
    timezone-aware) and the service's own sentence: a time without an offset is a 400 asking for
    its time zone, not a guess at UTC that ends a shared link hours early or late."""
    from datetime import timedelta

    from django.utils import timezone

    api = key_client(alice, scopes=SCOPES)
    conversation = api.post(f"{API}/conversations", {"title": "Shared"}, format="json").json()["id"]
    naive = (timezone.now() + timedelta(days=1)).replace(tzinfo=None, microsecond=0).isoformat()
    answer = api.post(f"{API}/conversations/{conversation}/shares", {"audience": "anyone", "expires_at": naive}, format="json")
    assert answer.status_code == 400, answer.content
    assert "time zone" in answer.json()["message"]
