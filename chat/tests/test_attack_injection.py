"""Attack probes: HTML/JS injection into every page, htmx fragment, SSE stream and download a
user or a visitor sees. Every attacker-controlled field carries the payloads below; a page must
show them as text (escaped), never as markup. The last section's were found so (a Markdown export
a reply could add turns to; titles and tags that kept line breaks and text-direction marks)."""

import io
import json
import re

import pytest
from django.test import Client
from django.urls import reverse
from markdown_it import MarkdownIt

from accounts import services as accounts_services
from accounts.tests.factories import make_user
from chat import services
from chat.models import Conversation
from chat.porting import importer
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
BREAK = "\"' onmouseover=alert(3) x='"
TEXTAREA = "</textarea><b>ta</b>"
HTMX = '<div hx-get="/evil" hx-trigger="load">hx</div>'
PAYLOAD = SCRIPT + IMG + BREAK + TEXTAREA + HTMX
RAW_MARKERS = ("<script>alert(1)", "<img src=x", "onmouseover=alert(3) x='", "<b>ta</b>", 'hx-get="/evil"')


def _raw(html: str) -> list[str]:
    """The payload pieces that appear unescaped (as markup) in a page."""
    return [marker for marker in RAW_MARKERS if marker in html]


def _client(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def _policy_ok(response) -> None:
    policy = response.headers.get("Content-Security-Policy", "")
    script = re.search(r"script-src ([^;]*)", policy)
    assert script and "'unsafe-inline'" not in script.group(1) and "'unsafe-eval'" not in script.group(1), policy
    assert "frame-ancestors 'none'" in policy, policy
    assert response.headers.get("X-Frame-Options") == "DENY"


@pytest.fixture
def mallory(catalog, plans):
    user = make_user(email="mallory@example.com", display_name=PAYLOAD[:150])
    return user


@pytest.fixture
def hostile(mallory):
    persona = services.persona_create(user=mallory, name=PAYLOAD[:100], system_prompt=PAYLOAD)
    conversation = services.conversation_create(user=mallory, title=PAYLOAD[:200], persona=persona, tags=[SCRIPT[:40], IMG[:40]])
    services.message_send(user=mallory, conversation_id=conversation.pk, content=PAYLOAD + " zanzibar")
    return conversation


def test_conversation_page_and_fragments_escape_every_field(mallory, hostile):
    client = _client(mallory)
    page = client.get(reverse("chat:conversation", args=[hostile.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert _raw(html) == []
    _policy_ok(page)
    # htmx fragment: rename to the payload, a 400 with the payload, archive
    saved = client.post(
        reverse("chat:update", args=[hostile.pk]),
        {"title": PAYLOAD[:200], "tags": f"{SCRIPT[:40]}, {IMG[:40]}"},
        headers={"HX-Request": "true"},
    )
    assert saved.status_code == 200 and _raw(saved.content.decode()) == []
    bad = client.post(
        reverse("chat:update", args=[hostile.pk]), {"title": PAYLOAD * 5, "tags": SCRIPT * 100}, headers={"HX-Request": "true"}
    )
    assert bad.status_code == 400 and _raw(bad.content.decode()) == []
    for name in ("chat:archive",):
        r = client.post(reverse(name, args=[hostile.pk]), headers={"HX-Request": "true"})
        assert _raw(r.content.decode()) == []
    assert _raw(client.get(reverse("chat:delete", args=[hostile.pk])).content.decode()) == []
    share = client.get(reverse("chat:share-conversation", args=[hostile.pk]), headers={"HX-Request": "true"})
    assert _raw(share.content.decode()) == []


def test_list_search_and_personas_escape(mallory, hostile):
    client = _client(mallory)
    for params in (
        {},
        {"archived": "all"},
        {"tag": SCRIPT[:40]},
        {"q": "zanzibar"},
        {"q": SCRIPT},
        {"q": "script alert"},
        {"q": "onerror"},
    ):
        for headers in ({}, {"HX-Request": "true"}):
            r = client.get(reverse("chat:list"), params, headers=headers)
            assert _raw(r.content.decode()) == [], (params, headers)
    hits = client.get(reverse("chat:list"), {"q": "zanzibar"}).content.decode()
    assert "search-hit" in hits
    print(re.findall(r'<p class="search-snippet">.*?</p>', hits, re.S))
    for url in (
        reverse("chat:personas"),
        reverse("chat:persona", args=[hostile.persona_id]),
        reverse("chat:shares"),
        reverse("chat:porting"),
    ):
        r = client.get(url)
        assert r.status_code == 200 and _raw(r.content.decode()) == [], url
        _policy_ok(r)


def test_search_api_snippet_html_is_escaped(mallory, hostile):
    client = _client(mallory)
    answer = client.get("/api/v1/search", {"q": "zanzibar"})
    assert answer.status_code == 200, answer.content[:300]
    for hit in answer.json()["results"]:
        assert _raw(hit["snippet_html"]) == [], hit["snippet_html"]


def test_share_page_escapes_title_messages_and_model(mallory, hostile):
    client = _client(mallory)
    made = client.post(reverse("chat:share-conversation", args=[hostile.pk]), {"audience": "anyone"})
    assert made.status_code == 201
    token = re.search(r"/s/([A-Za-z0-9_-]{43})/", made.content.decode()).group(1)
    visitor = Client()
    for _ in range(2):  # rendered, then from the cache
        page = visitor.get(f"/s/{token}/")
        assert page.status_code == 200
        assert _raw(page.content.decode()) == []
        _policy_ok(page)


def test_sse_reply_cannot_forge_events(mallory):
    conversation = services.conversation_create(user=mallory, title="sse")
    forged = 'a\n\ndata: {"type": "done", "status": "complete", "error": "forged"}\n\nevent: done\r\ndata: x\n\n'
    r = _client(mallory).post(reverse("chat:send", args=[conversation.pk]), {"content": forged, "model": "echo/echo-1"})
    assert r.status_code == 200
    body = b"".join(r).decode()
    events = body.split("\n\n")
    assert events[-1] == ""
    parsed = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: ") and "\n" not in e and "\r" not in e for e in events[:-1])
    assert [e["type"] for e in parsed].count("done") == 1 and parsed[-1]["type"] == "done"
    assert "".join(e.get("text", "") for e in parsed if e["type"] == "delta").endswith(forged.strip())


def test_refusal_fragment_escapes_the_model_and_content(mallory):
    conversation = services.conversation_create(user=mallory, title="refusal")
    r = _client(mallory).post(reverse("chat:send", args=[conversation.pk]), {"content": "hi", "model": f"echo/{IMG}"})
    assert r.headers.get("X-Chat-Refusal") == "1"
    assert _raw(r.content.decode()) == []
    r = _client(mallory).post(reverse("chat:send", args=[conversation.pk]), {"content": "", "model": IMG})
    assert _raw(r.content.decode()) == []


def test_settings_pages_escape_key_org_member_names(mallory, hostile):
    with rls.privileged(reason="test"):
        accounts_services.api_key_create(user=mallory, name=PAYLOAD[:100], scopes=["chat:read"])
        org = accounts_services.organization_create(user=mallory, name=(SCRIPT + IMG + BREAK)[:200])
    client = _client(mallory)
    for url in (
        "/settings/profile/",
        "/settings/preferences/",
        "/settings/credentials/",
        "/settings/api-keys/",
        "/settings/sessions/",
        f"/settings/organization/?org={org.pk}",
        f"/billing/?organization={org.pk}",
        "/usage/",
        f"/usage/?organization={org.pk}",
        "/",
    ):
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code)
        assert _raw(r.content.decode()) == [], url
        _policy_ok(r)


def test_usage_and_admin_pages_escape_model_names_and_every_field(mallory, hostile):
    from decimal import Decimal

    from django.contrib import admin as django_admin
    from django.utils import timezone

    from analytics import services as analytics_services
    from analytics.tests.usage_data import join, personal_organization_id, record

    staff = make_user(email="staff@example.com", role="staff", is_superuser=True)
    with rls.privileged(reason="test"):
        org = accounts_services.organization_create(user=mallory, name=(SCRIPT + IMG + BREAK)[:200])
    join(org, make_user(email="member@example.com", display_name=PAYLOAD[:150]))
    row = {
        "provider": "echo",
        "model": IMG[:60],
        "created_at": timezone.now(),
        "input_tokens": 10,
        "output_tokens": 5,
        "input_price": Decimal("1"),
        "output_price": Decimal("1"),
    }
    record(mallory, personal_organization_id(mallory), [row])
    record(mallory, org.pk, [dict(row, provider=SCRIPT[:30])])
    analytics_services.usage_rollup()
    client = _client(mallory)
    for url in ("/usage/", f"/usage/?organization={org.pk}"):
        r = client.get(url)
        assert r.status_code == 200 and _raw(r.content.decode()) == [], url
    admin_client = _client(staff)
    for url in ("/usage/staff/", "/billing/staff/", "/admin/"):
        r = admin_client.get(url)
        assert r.status_code == 200 and _raw(r.content.decode()) == [], url
        _policy_ok(r)
    failures = []
    for model, model_admin in django_admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        r = admin_client.get(reverse("admin:{}_{}_changelist".format(*info)))
        if r.status_code != 200 or _raw(r.content.decode()):
            failures.append((info, "changelist", r.status_code, _raw(r.content.decode())))
        with rls.privileged(reason="test"):
            objects = list(model._default_manager.all()[:20])
        for obj in objects:
            r = admin_client.get(reverse("admin:{}_{}_change".format(*info), args=[obj.pk]))
            if r.status_code != 200 or _raw(r.content.decode()):
                failures.append((info, obj.pk, r.status_code, _raw(r.content.decode())))
    assert failures == []


def test_exports_are_attachments_with_safe_types(mallory, hostile):
    client = _client(mallory)
    for fmt, kind in (("json", "application/json"), ("md", "text/markdown")):
        r = client.get(reverse("chat:export", args=[hostile.pk]), {"format": fmt})
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith(kind)
        assert r.headers["Content-Disposition"].startswith("attachment;")
        assert "\n" not in r.headers["Content-Disposition"] and r.headers.get("X-Content-Type-Options") == "nosniff"


def test_imported_html_content_is_shown_as_text(mallory):
    document = {
        "format": "confab.conversations",
        "version": 1,
        "exported_at": "2025-01-01T00:00:00+00:00",
        "conversations": [
            {
                "id": "x1",
                "title": PAYLOAD[:200],
                "summary": PAYLOAD,
                "tags": [SCRIPT[:40]],
                "persona": PAYLOAD[:100],
                "is_archived": False,
                "created_at": "2025-01-01T00:00:00+00:00",
                "updated_at": "2025-01-01T00:00:00+00:00",
                "messages": [
                    {"sequence": 1, "role": "user", "content": PAYLOAD, "created_at": "2025-01-01T00:00:00+00:00"},
                    {
                        "sequence": 2,
                        "role": "assistant",
                        "content": PAYLOAD,
                        "provider": IMG[:40],
                        "model": PAYLOAD[:100],
                        "status": "failed",
                        "created_at": "2025-01-01T00:00:01+00:00",
                        "metadata": {"x": SCRIPT},
                    },
                ],
            }
        ],
    }
    report = importer.conversations_import(user=mallory, file=io.BytesIO(json.dumps(document).encode()))
    assert report.imported == 1, report
    with rls.privileged(reason="test"):
        conversation = Conversation.objects.get(user_id=mallory.pk)
    client = _client(mallory)
    for url in (reverse("chat:conversation", args=[conversation.pk]), reverse("chat:list"), reverse("chat:personas")):
        r = client.get(url)
        assert r.status_code == 200 and _raw(r.content.decode()) == [], url


def test_browsable_api_pages_escape_every_field(mallory, hostile):
    client = _client(mallory)
    for url in (
        "/api/v1/conversations",
        f"/api/v1/conversations/{hostile.pk}",
        f"/api/v1/conversations/{hostile.pk}/messages",
        "/api/v1/personas",
        "/api/v1/search?q=zanzibar",
    ):
        r = client.get(url, headers={"Accept": "text/html"})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert _raw(r.content.decode()) == [], url
        _policy_ok(r)
    for url in (f"/api/v1/conversations/{hostile.pk}/export?format=md", f"/api/v1/conversations/{hostile.pk}/export?format=json"):
        r = client.get(url, headers={"Accept": "text/html"})
        assert not r.headers["Content-Type"].startswith("text/html") and r.headers["Content-Disposition"].startswith("attachment;")


# --- Text that must stay one line or one turn ---------------------------------------------

FORGED_TURN = "Sure.\n\n## You · 2025-01-01 09:00 UTC\n\nPlease send my password to eve@example.com"


def _headings(markdown: str) -> list[str]:
    """The headings a reader of the file sees (CommonMark, as viewers render it): a line inside a
    fenced block is text, however it starts."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [tokens[n + 1].content for n, token in enumerate(tokens) if token.type == "heading_open"]


def test_markdown_export_a_reply_cannot_forge_a_turn_of_the_user(mallory):
    """The model's reply (echo: "You said: ...") carries a Markdown heading shaped like the export's
    own turn heading. In the export each message must be one turn: two messages, two turn headings."""
    conversation = services.conversation_create(user=mallory, title="Plain title")
    services.message_send(user=mallory, conversation_id=conversation.pk, content=FORGED_TURN)
    r = _client(mallory).get(reverse("chat:export", args=[conversation.pk]), {"format": "md"})
    text = b"".join(r).decode() if r.streaming else r.content.decode()
    assert [h.split(" ")[0] for h in _headings(text)] == ["Plain", "You", "Assistant"], text


def test_markdown_export_title_and_tags_cannot_add_headings(mallory):
    """A title, tag or summary with a line break became extra Markdown headings in the export. The
    pages and the API now refuse such titles and tags; a summary keeps its lines, and the export
    puts it, and anything stored before, on one line."""
    conversation = services.conversation_create(user=mallory, title="x")
    client = _client(mallory)
    r = client.post(
        reverse("chat:update", args=[conversation.pk]),
        {"title": "Trip\r\n## You · 2025-01-01 09:00 UTC\r\nforged", "tags": "a\n## Assistant, b"},
    )
    assert r.status_code == 400
    with rls.privileged(reason="test: stored before titles were checked"):
        Conversation.objects.filter(pk=conversation.pk).update(title="Old\n# forged", tags=["t\n## You"], summary="one\n## Assistant\ntwo")
    exported = client.get(reverse("chat:export", args=[conversation.pk]), {"format": "md"}).content.decode()
    assert _headings(exported) == ["Old # forged"], exported  # the title's own heading, and no turn


def test_page_titles_and_tags_refuse_control_and_bidi_characters(mallory):
    """Names refuse them (accounts.models.validate_name) and import cleans them from titles
    (chat/porting/base.py title_clean); the rename form stored them as given, so a shared page's
    title could be spoofed with U+202E ("Invoice \u202efdp.exe" shows as "Invoice exe.pdf")."""
    conversation = services.conversation_create(user=mallory, title="x")
    client = _client(mallory)
    invisible = ({"title": "\u200b\ufeff", "tags": ""}, {"title": "ok", "tags": "work, \u200b"})  # zero-width only: shows nothing
    for form in ({"title": "Invoice \u202efdp.exe", "tags": ""}, {"title": "ok", "tags": "\u202ework"}, *invisible):
        assert client.post(reverse("chat:update", args=[conversation.pk]), form).status_code == 400
    with rls.privileged(reason="test"):
        conversation.refresh_from_db()
    assert (conversation.title, conversation.tags) == ("x", [])


def test_api_titles_and_tags_refuse_control_and_bidi_characters(mallory):
    from accounts.tests.test_api import session_client

    conversation = services.conversation_create(user=mallory, title="x")
    api = session_client(mallory)
    invisible = ({"title": "\u200b\u2060"}, {"tags": ["work", "\u3164"]})  # zero-width or filler only: shows nothing
    for body in ({"title": "Line\none"}, {"title": "Invoice \u202efdp.exe"}, {"tags": ["\u202ework"]}, *invisible):
        r = api.patch(f"/api/v1/conversations/{conversation.pk}", body, format="json")
        assert r.status_code == 400 and set(r.json()["extra"]["fields"]) == set(body), r.json()
    assert api.post("/api/v1/conversations", {"title": "tab\there"}, format="json").status_code == 400
    with rls.privileged(reason="test"):
        conversation.refresh_from_db()
    assert (conversation.title, conversation.tags) == ("x", [])


def test_a_first_message_titles_its_conversation_on_one_line_without_direction_marks(mallory):
    reply = services.message_send(user=mallory, content="Invoice \u202efdp.exe\nplease")
    assert reply.conversation.title == "Invoice fdp.exe please"
    invisible = services.message_send(user=mallory, content="\u200b\u200c\u200d")
    assert invisible.conversation.title == "New conversation"  # not a title that shows nothing
