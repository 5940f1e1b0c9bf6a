"""Chat pages (plain forms and their htmx variants): the conversation list (filters, newest first, pages), the conversation view
with its composer and catalog models, sending (the reply streamed as server-sent events),
refusals shown inline with the billing link, rename/tag/persona, archive, delete with
confirmation, personas; another user's conversation or persona is 404 on every page URL;
preferences offer the catalog's models."""

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Preferences
from accounts.tests.factories import make_user
from analytics.models import TokenUsage
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.models import Conversation, Message, Persona
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def signed_in(client, alice):
    client.force_login(alice)
    return client


def _events(response) -> list[dict]:
    body = b"".join(response).decode()  # an async body, consumed as the test client can
    return [json.loads(chunk.removeprefix("data: ")) for chunk in body.strip().split("\n\n")]


def _send(client, conversation, content: str, model: str = "echo/echo-1"):
    return client.post(reverse("chat:send", args=[conversation.pk]), {"content": content, "model": model})


def _read(query):
    """Rows as they are, seen past row-level security."""
    with rls.privileged(reason="test"):
        return query()


def _fresh(row):
    with rls.privileged(reason="test"):
        row.refresh_from_db()
    return row


def _listed(client, **params) -> list[str]:
    html = client.get(reverse("chat:list"), params).content.decode()
    return [line.split(">", 1)[1].split("<", 1)[0] for line in html.split('class="chat-list-title"')[1:]]


def test_the_list_is_newest_first_filtered_by_tag_and_archived_and_paged(signed_in, alice):
    for n in range(22):
        services.conversation_create(user=alice, title=f"Talk {n:02d}", tags=["work"] if n % 2 else [])
    archived = services.conversation_create(user=alice, title="Old talk")
    services.conversation_update(user=alice, conversation=archived, is_archived=True)

    first = _listed(signed_in)
    assert first == [f"Talk {n:02d}" for n in range(21, 1, -1)]  # 20 a page, newest first, no archived one
    assert _listed(signed_in, page=2) == ["Talk 01", "Talk 00"]
    assert _listed(signed_in, tag="work") == [f"Talk {n:02d}" for n in range(21, 0, -2)]
    assert _listed(signed_in, archived="archived") == ["Old talk"]
    assert len(_listed(signed_in, archived="all", page=2)) == 3
    refused = signed_in.get(reverse("chat:list"), {"archived": "maybe"})
    assert refused.status_code == 400 and "Select a valid choice" in refused.content.decode()


def test_new_conversation_with_a_persona_opens_its_page(signed_in, alice):
    persona = services.persona_create(user=alice, name="Pirate", system_prompt="Talk like a pirate.")
    response = signed_in.post(reverse("chat:new"), {"persona": str(persona.pk)})
    conversation = _read(Conversation.objects.get)
    assert response.status_code == 302 and response.url == reverse("chat:conversation", args=[conversation.pk])
    assert conversation.persona_id == persona.pk
    page = signed_in.get(response.url).content.decode()
    assert "Pirate" in page and "No messages yet" in page
    bob_persona = services.persona_create(user=make_user(), name="Bob's", system_prompt="x")
    refused = signed_in.post(reverse("chat:new"), {"persona": str(bob_persona.pk)}, follow=True)
    assert "Select a valid choice" in refused.content.decode()  # not one of alice's personas
    assert _read(Conversation.objects.count) == 1


def test_the_view_shows_the_messages_and_a_composer_with_the_catalog(signed_in, alice):
    reply = services.message_send(user=alice, content="hello page")
    page = signed_in.get(reverse("chat:conversation", args=[reply.conversation.pk])).content.decode()
    assert "hello page" in page and "You said: hello page" in page
    assert "2 in · 4 out tokens" in page
    assert '<option value="echo/echo-1" selected>' in page  # the last reply's model
    assert '<optgroup label="openai">' in page and 'value="openai/gpt-5"' in page
    assert "js/chat.js" in page and "data-chat-composer" in page


def test_send_streams_the_reply_then_its_tokens_and_cost(signed_in, alice):
    conversation = services.conversation_create(user=alice)
    response = _send(signed_in, conversation, "stream to the page")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = _events(response)
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "You said: stream to the page"
    done = events[-1]
    assert (done["type"], done["status"], done["input_tokens"], done["output_tokens"]) == ("done", "complete", 4, 6)
    with rls.privileged(reason="test"):
        message = Message.objects.get(pk=done["message_id"])
        assert TokenUsage.objects.get().message_id == message.pk
    assert message.content == "You said: stream to the page" and str(message.conversation_id) == str(conversation.pk)


def test_refusals_are_shown_inline_with_the_billing_link_and_store_nothing(signed_in, alice, plans):
    conversation = services.conversation_create(user=alice)

    def refused(response, status: int, text: str, upgrade: bool = True) -> None:
        body = response.content.decode()
        assert response.status_code == status, body
        assert response["X-Chat-Refusal"] == "1" and 'data-testid="refusal"' in body and text in body
        assert ('href="/billing/"' in body) is upgrade

    refused(_send(signed_in, conversation, "hi", "openai/gpt-5"), 403, "Your Free plan does not include gpt-5")
    refused(_send(signed_in, conversation, "hi", "openai/gpt-7"), 400, "has no price in the catalog")
    refused(_send(signed_in, conversation, "hi", "nope/x"), 400, "Unknown provider")
    for half_a_pair in ("/echo-1", "echo/", "echo-1"):  # not sent with a default filled in unasked
        refused(_send(signed_in, conversation, "hi", half_a_pair), 400, "Choose a model from the list", upgrade=False)
    refused(_send(signed_in, conversation, "   "), 400, "Write a message first", upgrade=False)
    plans["free"].monthly_tokens = 1
    with rls.privileged(reason="test"):
        plans["free"].save()
    refused(_send(signed_in, conversation, "needs tokens"), 402, "tokens a month")
    put_on_plan(organization_of(alice), plans["pro"])
    plans["pro"].requests_per_minute = 1
    with rls.privileged(reason="test"):
        plans["pro"].save()
    assert _events(_send(signed_in, conversation, "first"))[-1]["status"] == "complete"
    limited = _send(signed_in, conversation, "second")
    refused(limited, 429, "requests a minute")
    assert int(limited["Retry-After"]) >= 1
    with rls.privileged(reason="test"):
        assert (Message.objects.count(), TokenUsage.objects.count()) == (2, 1)


def test_rename_tag_persona_archive_and_delete_with_confirmation(signed_in, alice):
    conversation = services.conversation_create(user=alice, title="Draft")
    persona = services.persona_create(user=alice, name="Editor", system_prompt="Be terse.")
    url = reverse("chat:update", args=[conversation.pk])
    saved = signed_in.post(url, {"title": "Lisbon trip", "tags": "travel, 2027, travel", "persona": str(persona.pk)})
    assert saved.status_code == 302
    _fresh(conversation)
    assert (conversation.title, conversation.tags, conversation.persona_id) == ("Lisbon trip", ["travel", "2027"], persona.pk)
    too_long = signed_in.post(url, {"title": "x" * 201, "tags": "t" * 41})
    assert too_long.status_code == 400 and "at most 40 characters" in too_long.content.decode()

    htmx = {"HTTP_HX_REQUEST": "true"}
    swapped = signed_in.post(url, {"title": "Porto trip", "tags": "travel"}, **htmx)
    head = swapped.content.decode()
    assert swapped.status_code == 200 and head.startswith('<div id="conversation-head"') and "</html>" not in head
    assert ">Porto trip</h1>" in head and "Conversation saved." in head
    refused = signed_in.post(url, {"title": "x" * 201}, **htmx)
    assert refused.status_code == 400 and "at most 200 characters" in refused.content.decode()
    assert refused.content.decode().startswith('<div id="conversation-head"')
    archived_head = signed_in.post(reverse("chat:archive", args=[conversation.pk]), {"archived": "1"}, **htmx)
    assert 'data-testid="archived"' in archived_head.content.decode() and ">Unarchive<" in archived_head.content.decode()
    assert 'name="archived" value="0"' in archived_head.content.decode()  # the button now asks to restore
    signed_in.post(reverse("chat:archive", args=[conversation.pk]), {"archived": "0"}, **htmx)
    assert _fresh(conversation).title == "Porto trip" and conversation.persona_id is None

    assert signed_in.post(reverse("chat:archive", args=[conversation.pk]), {"archived": "1"}).status_code == 302
    assert _fresh(conversation).is_archived
    assert 'data-testid="archived"' in signed_in.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    signed_in.post(reverse("chat:archive", args=[conversation.pk]), {"archived": "0"})
    assert not _fresh(conversation).is_archived
    refused = signed_in.post(reverse("chat:archive", args=[conversation.pk]), {"archived": "maybe"})
    assert refused.status_code == 400 and "archived=1 or archived=0" in refused.content.decode()

    confirm = signed_in.get(reverse("chat:delete", args=[conversation.pk]))
    assert confirm.status_code == 200 and "Delete this conversation?" in confirm.content.decode()
    assert _read(Conversation.objects.filter(pk=conversation.pk).exists)  # asking deletes nothing
    deleted = signed_in.post(reverse("chat:delete", args=[conversation.pk]))
    assert deleted.status_code == 302 and deleted.url == reverse("chat:list")
    assert not _read(Conversation.objects.filter(pk=conversation.pk).exists)


def test_another_users_conversation_and_persona_are_404_on_every_page_url(client, alice):
    reply = services.message_send(user=alice, content="private")
    persona = services.persona_create(user=alice, name="Mine", system_prompt="Secret prompt.")
    client.force_login(make_user(email="bob@example.com"))
    conversation_id = reply.conversation.pk
    for name, method, data in [
        ("chat:conversation", "get", {}),
        ("chat:update", "post", {"title": "taken"}),
        ("chat:archive", "post", {}),
        ("chat:delete", "get", {}),
        ("chat:delete", "post", {}),
        ("chat:send", "post", {"content": "hi", "model": "echo/echo-1"}),
    ]:
        assert getattr(client, method)(reverse(name, args=[conversation_id]), data).status_code == 404, name
    for name, method in [("chat:persona", "get"), ("chat:persona", "post"), ("chat:persona-delete", "post")]:
        assert getattr(client, method)(reverse(name, args=[persona.pk]), {"name": "x", "system_prompt": "y"}).status_code == 404, name
    assert client.get(reverse("chat:conversation", args=[uuid.uuid4()])).status_code == 404
    assert "private" not in client.get(reverse("chat:list")).content.decode()
    with rls.privileged(reason="test"):
        conversation = Conversation.objects.get(pk=conversation_id)
        assert (conversation.title, conversation.is_archived, conversation.message_count) == ("private", False, 2)
        assert Persona.objects.get(pk=persona.pk).name == "Mine"


def test_personas_page_creates_edits_and_deletes(signed_in, alice):
    url = reverse("chat:personas")
    created = signed_in.post(url, {"name": "Tutor", "system_prompt": "Explain simply.", "model": "openai/gpt-5-mini", "temperature": "0.3"})
    assert created.status_code == 302
    persona = _read(Persona.objects.get)
    assert (persona.provider, persona.model, str(persona.temperature)) == ("openai", "gpt-5-mini", "0.30")
    assert "Tutor" in signed_in.get(url).content.decode()
    invalid = signed_in.post(url, {"name": "", "system_prompt": "x", "model": "openai/gpt-7", "temperature": "5"})
    assert invalid.status_code == 400 and _read(Persona.objects.count) == 1
    edit = reverse("chat:persona", args=[persona.pk])
    assert 'value="openai/gpt-5-mini" selected' in signed_in.get(edit).content.decode()
    assert signed_in.post(edit, {"name": "Tutor 2", "system_prompt": "Explain.", "model": "", "temperature": ""}).status_code == 302
    _fresh(persona)
    assert (persona.name, persona.provider, persona.model, persona.temperature) == ("Tutor 2", "", "", None)
    assert signed_in.post(reverse("chat:persona-delete", args=[persona.pk])).status_code == 302
    assert not _read(Persona.objects.exists)


def test_preferences_offer_the_catalog_models_and_refuse_a_mismatched_pair(signed_in, alice):
    url = reverse("settings:preferences")
    page = signed_in.get(url).content.decode()
    assert '<option value="gpt-5">GPT-5</option>' in page and '<option value="anthropic">' in page
    base = {"theme": "system", "temperature": "0.7", "language": "en"}
    mismatched = signed_in.post(url, {**base, "preferred_provider": "anthropic", "preferred_model": "gpt-5"})
    assert mismatched.status_code == 400 and "gpt-5 is not a model of anthropic" in mismatched.content.decode()
    unknown = signed_in.post(url, {**base, "preferred_provider": "openai", "preferred_model": "gpt-7"})
    assert unknown.status_code == 400
    assert signed_in.post(url, {**base, "preferred_provider": "openai", "preferred_model": "gpt-5"}).status_code == 302
    preferences = _read(lambda: Preferences.objects.get(user=alice))
    assert (preferences.preferred_provider, preferences.preferred_model) == ("openai", "gpt-5")
    conversation = services.conversation_create(user=alice)
    assert '<option value="openai/gpt-5" selected>' in signed_in.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_list_and_the_view_take_as_many_queries_for_many_rows_as_for_few(signed_in, alice, plans):
    put_on_plan(organization_of(alice), plans["enterprise"])  # 600 requests a minute
    persona = services.persona_create(user=alice, name="Tutor", system_prompt="Explain.")
    few = services.message_send(user=alice, content="one").conversation
    signed_in.get(reverse("chat:list"))  # the session's first request records it: not counted
    list_few, view_few = _queries(signed_in, reverse("chat:list")), _queries(signed_in, reverse("chat:conversation", args=[few.pk]))
    for n in range(15):
        services.message_send(user=alice, content=f"more {n}", conversation_id=few.pk)
        services.conversation_create(user=alice, title=f"Talk {n}", persona=persona, tags=["a", "b"])
    assert _queries(signed_in, reverse("chat:list")) == list_few
    assert _queries(signed_in, reverse("chat:conversation", args=[few.pk])) == view_few
