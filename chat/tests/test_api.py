"""The chat API: conversations CRUD with filters, messages (cursor pages, replies, streams),
personas, the catalog; scopes; another user's rows are 404; refusals in the one error shape."""

import base64
import json
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, key_client, session_client
from analytics.models import TokenUsage
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.models import Conversation, Message
from chat.providers import echo
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


def _events(response) -> list[dict]:
    body = b"".join(response).decode()  # an async body, consumed as the test client can
    assert body.endswith("\n\n")
    return [json.loads(chunk.removeprefix("data: ")) for chunk in body.strip().split("\n\n")]


def test_conversation_crud_and_filters(alice):
    client = session_client(alice)
    created = client.post(f"{API}/conversations", {"title": "Trip plans", "tags": ["travel"]}, format="json")
    assert created.status_code == 201, created.json()
    conversation_id = created.json()["id"]
    services.message_send(user=alice, content="something else entirely")
    listed = client.get(f"{API}/conversations").json()
    assert listed["count"] == 2
    assert [c["title"] for c in client.get(f"{API}/conversations", {"tag": "travel"}).json()["results"]] == ["Trip plans"]
    assert [c["title"] for c in client.get(f"{API}/conversations", {"q": "entirely"}).json()["results"]] == ["something else entirely"]
    patched = client.patch(f"{API}/conversations/{conversation_id}", {"title": "Lisbon", "is_archived": True}, format="json")
    assert patched.status_code == 200 and patched.json()["title"] == "Lisbon" and patched.json()["is_archived"] is True
    assert [c["title"] for c in client.get(f"{API}/conversations", {"archived": "true"}).json()["results"]] == ["Lisbon"]
    assert client.get(f"{API}/conversations", {"archived": "false"}).json()["count"] == 1
    assert_error(client.patch(f"{API}/conversations/{conversation_id}", {"tags": "not a list"}, format="json"), 400)
    assert client.delete(f"{API}/conversations/{conversation_id}").status_code == 204
    assert_error(client.get(f"{API}/conversations/{conversation_id}"), 404)


def test_another_users_conversation_and_persona_are_404(alice):
    reply = services.message_send(user=alice, content="private")
    persona = services.persona_create(user=alice, name="Mine", system_prompt="Secret prompt.")
    bob = session_client(make_user(email="bob@example.com"))
    conversation = f"{API}/conversations/{reply.conversation.pk}"
    assert_error(bob.get(conversation), 404)
    assert_error(bob.patch(conversation, {"title": "taken"}, format="json"), 404)
    assert_error(bob.delete(conversation), 404)
    assert_error(bob.get(f"{conversation}/messages"), 404)
    assert_error(bob.post(f"{conversation}/messages", {"content": "hi"}, format="json"), 404)
    assert_error(bob.get(f"{API}/personas/{persona.pk}"), 404)
    assert_error(bob.post(f"{API}/conversations", {"persona_id": str(persona.pk)}, format="json"), 404)
    assert_error(bob.get(f"{API}/conversations", {"persona_id": str(persona.pk)}), 404)  # a filter's id too
    assert session_client(alice).get(f"{API}/conversations", {"persona_id": str(persona.pk)}).json()["count"] == 0
    assert bob.get(f"{API}/conversations").json()["count"] == 0
    with rls.privileged(reason="test"):
        assert Message.objects.filter(conversation_id=reply.conversation.pk).count() == 2


def test_post_a_message_returns_the_reply_with_tokens_and_cost(alice):
    client = session_client(alice)
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    response = client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "hello api"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["message"]["content"] == "You said: hello api" and body["message"]["status"] == "complete"
    assert (body["message"]["input_tokens"], body["message"]["output_tokens"]) == (2, 4)
    assert body["conversation"]["title"] == "hello api" and body["conversation"]["message_count"] == 2
    with rls.privileged(reason="test"):
        [row] = TokenUsage.objects.all()
    assert str(row.message_id) == body["message"]["id"]
    assert Decimal(body["message"]["cost"]) == row.cost


def test_the_stream_parameter_is_a_boolean_or_a_400_and_false_is_a_plain_reply(alice):
    client = session_client(alice)
    url = f"{API}/conversations/{client.post(f'{API}/conversations', {}, format='json').json()['id']}/messages"
    body = assert_error(client.post(f"{url}?stream=perhaps", {"content": "hi"}, format="json"), 400)
    assert body["extra"]["fields"] == {"stream": ["Must be a valid boolean."]}
    assert Message.objects.count() == 0  # refused before anything is stored
    plain = client.post(f"{url}?stream=false", {"content": "hi"}, format="json")
    assert plain.status_code == 201 and plain.json()["message"]["content"] == "You said: hi"
    streamed = client.post(f"{url}?stream=1", {"content": "again"}, format="json")
    assert streamed.status_code == 200 and _events(streamed)[-1]["type"] == "done"


def test_refusals_are_402_429_and_400_with_the_reason_and_store_nothing(alice, plans):
    client = session_client(alice)
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    url = f"{API}/conversations/{conversation_id}/messages"
    body = assert_error(client.post(url, {"content": "hi", "provider": "openai", "model": "gpt-7"}, format="json"), 400, "no price")
    assert body["extra"]["code"] == "model_unavailable"
    assert_error(client.post(url, {"content": "hi", "provider": "nope", "model": "x"}, format="json"), 400, "unknown provider")
    assert_error(client.post(url, {"content": ""}, format="json"), 400)
    plans["free"].monthly_tokens = 1
    with rls.privileged(reason="test"):
        plans["free"].save()
    assert_error(client.post(url, {"content": "needs tokens"}, format="json"), 402, "tokens a month")
    assert_error(client.post(f"{url}?stream=true", {"content": "needs tokens"}, format="json"), 402, "tokens a month")
    put_on_plan(organization_of(alice), plans["pro"])
    plans["pro"].requests_per_minute = 1
    with rls.privileged(reason="test"):
        plans["pro"].save()
    assert client.post(url, {"content": "first"}, format="json").status_code == 201
    limited = client.post(url, {"content": "second"}, format="json")
    assert_error(limited, 429, "requests a minute")
    assert int(limited["Retry-After"]) >= 1
    with rls.privileged(reason="test"):
        assert (Message.objects.count(), TokenUsage.objects.count()) == (2, 1)


def test_stream_sends_deltas_then_a_final_event_with_tokens_and_cost(alice, monkeypatch):
    in_transaction = []
    real = echo.stream

    async def watched(request, **kwargs):
        # Where the request ran (its thread's connection): is a transaction open while the provider answers?
        in_transaction.append(await sync_to_async(lambda: connections["default"].in_atomic_block)())
        async for event in real(request, **kwargs):
            yield event

    monkeypatch.setattr(echo, "stream", watched)
    client = session_client(alice)
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    response = client.post(f"{API}/conversations/{conversation_id}/messages?stream=true", {"content": "stream this"}, format="json")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = _events(response)
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "You said: stream this"
    assert [e["type"] for e in events].count("done") == 1 and events[-1]["type"] == "done"
    done = events[-1]
    assert (done["status"], done["input_tokens"], done["output_tokens"], done["cost"]) == (
        "complete",
        2,
        4,
        "0.0000000000",
    )  # cost to 1e-10
    with rls.privileged(reason="test"):
        message = Message.objects.get(pk=done["message_id"])
        assert TokenUsage.objects.get().message_id == message.pk
    assert message.content == "You said: stream this" and message.status == "complete"
    assert in_transaction == [False]


def test_messages_are_listed_in_order_with_cursor_pages(alice):
    conversation = None
    for n in range(3):
        conversation = services.message_send(
            user=alice, content=f"message {n}", conversation_id=conversation and conversation.pk
        ).conversation
    client = session_client(alice)
    url = f"{API}/conversations/{conversation.pk}/messages"
    first = client.get(url, {"page_size": 4}).json()
    assert [m["sequence"] for m in first["results"]] == [1, 2, 3, 4] and first["previous"] is None
    second = client.get(first["next"]).json()
    assert [m["sequence"] for m in second["results"]] == [5, 6] and second["next"] is None
    assert second["results"][0]["content"] == "message 2"


@pytest.mark.parametrize("position", ["abc", "1e3", "1.5", "5a82dda9-d58e-499a-82d1-ad31ae77b6f7"])
def test_a_forged_cursor_position_is_an_invalid_cursor_not_a_500(alice, position):
    """A cursor is the client's to send back: one that decodes but names no sequence number is
    DRF's 404 for a cursor it cannot read, as any garbled one."""
    conversation = services.message_send(user=alice, content="hello").conversation
    url = f"{API}/conversations/{conversation.pk}/messages"
    for client in (session_client(alice), key_client(alice, scopes=["chat:read"])):
        client.raise_request_exception = False
        forged = client.get(url, {"cursor": base64.b64encode(f"p={position}".encode()).decode()})
        assert (forged.status_code, forged.json()["message"]) == (404, "Invalid cursor")
    # A well-formed position still pages from it.
    after_first = client.get(url, {"cursor": base64.b64encode(b"p=1").decode()}).json()
    assert [m["sequence"] for m in after_first["results"]] == [2]


def test_scopes_read_and_write(alice):
    reply = services.message_send(user=alice, content="scoped")
    reader = key_client(alice, scopes=["chat:read"])
    assert reader.get(f"{API}/conversations").status_code == 200
    assert reader.get(f"{API}/models").status_code == 200
    assert_error(reader.post(f"{API}/conversations/{reply.conversation.pk}/messages", {"content": "x"}, format="json"), 403, "chat:write")
    assert_error(key_client(alice, scopes=["account:read"]).get(f"{API}/conversations"), 403, "chat:read")
    writer = key_client(alice, scopes=["chat:read", "chat:write"])
    sent = writer.post(f"{API}/conversations/{reply.conversation.pk}/messages", {"content": "by key"}, format="json")
    assert sent.status_code == 201 and sent.json()["message"]["sequence"] == 4


def test_personas_crud_and_a_persona_shapes_the_conversation(alice, plans):
    client = session_client(alice)
    assert_error(
        client.post(f"{API}/personas", {"name": "Bad", "system_prompt": "x", "provider": "openai", "model": "gpt-7"}, format="json"),
        400,
        "no price",
    )
    created = client.post(f"{API}/personas", {"name": "Poet", "system_prompt": "Answer in verse.", "temperature": "0.7"}, format="json")
    assert created.status_code == 201, created.json()
    persona_id = created.json()["id"]
    conversation = client.post(f"{API}/conversations", {"persona_id": persona_id}, format="json").json()
    assert conversation["persona_id"] == persona_id
    reply = client.post(f"{API}/conversations/{conversation['id']}/messages", {"content": "hi"}, format="json").json()
    assert reply["message"]["input_tokens"] == 4  # "Answer in verse." + "hi": the system prompt went to the provider
    assert client.get(f"{API}/personas/{persona_id}").json()["usage_count"] == 1
    assert client.patch(f"{API}/personas/{persona_id}", {"name": "Bard"}, format="json").json()["name"] == "Bard"
    assert client.delete(f"{API}/personas/{persona_id}").status_code == 204
    with rls.privileged(reason="test"):
        assert Conversation.objects.get(pk=conversation["id"]).persona_id is None


@pytest.mark.parametrize("zero", ["-0", "-0.00", "-0.0"])
def test_a_temperature_of_minus_zero_is_answered_and_stored_as_zero(alice, zero):
    client = session_client(alice)
    created = client.post(f"{API}/personas", {"name": "Cold", "system_prompt": "x", "temperature": zero}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["temperature"] == "0.00"
    persona_id = created.json()["id"]
    assert client.get(f"{API}/personas/{persona_id}").json()["temperature"] == "0.00"
    updated = client.patch(f"{API}/personas/{persona_id}", {"temperature": zero}, format="json")
    assert updated.status_code == 200, updated.json()
    assert updated.json()["temperature"] == "0.00"


def test_models_lists_the_catalog_with_prices(alice):
    models = {m["model"]: m for m in session_client(alice).get(f"{API}/models").json()}
    assert models["gpt-4o-mini"]["input_price"] == "0.150000" and models["gpt-4o-mini"]["output_price"] == "0.600000"
    assert models["echo-1"]["provider"] == "echo" and {"openai", "anthropic", "gemini", "echo"} == {m["provider"] for m in models.values()}


def _queries(client, url) -> int:
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections["default"]) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_lists_cost_the_same_queries_for_one_row_or_many(alice):
    client = session_client(alice)
    reply = services.message_send(user=alice, content="first")
    client.get(f"{API}/models")  # the session's first request also records its activity
    one = (_queries(client, f"{API}/conversations"), _queries(client, f"{API}/conversations/{reply.conversation.pk}/messages"))
    for n in range(4):
        services.message_send(user=alice, content=f"more {n}", conversation_id=reply.conversation.pk)
        services.message_send(user=alice, content=f"another {n}")
    many = (_queries(client, f"{API}/conversations"), _queries(client, f"{API}/conversations/{reply.conversation.pk}/messages"))
    assert one == many


@pytest.mark.parametrize("auth", ["api_key", "session"])
def test_a_send_holds_no_transaction_while_the_provider_answers(alice, monkeypatch, auth):
    client = key_client(alice, scopes=["chat:read", "chat:write"]) if auth == "api_key" else session_client(alice)
    conversation_id = services.message_send(user=alice, content="first").conversation.pk
    request_connection = connections["default"]  # the test client runs the view on this thread, with this connection
    seen = []
    real = echo.complete

    async def watching(request, **kwargs):
        # Read across threads on purpose: the request's connection, while the provider is answering.
        raw = request_connection.connection
        seen.append((request_connection.in_atomic_block, raw.info.transaction_status.name if raw else "closed"))
        return await real(request, **kwargs)

    monkeypatch.setattr(echo, "complete", watching)
    response = client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "are you there"}, format="json")
    assert response.status_code == 201, response.json()
    assert seen in ([(False, "IDLE")], [(False, "closed")]), seen
    assert response.json()["message"]["content"] == "You said: are you there"


def test_preferences_through_the_api_take_only_a_pair_of_the_catalog_as_the_settings_page_does(alice):
    """The settings page refused a model of another provider, or one not in the catalog; the API
    stored anything (review of 2026-12-02). Now the service checks the pair as it will be stored."""
    api = key_client(alice, scopes=["account:read", "account:write"])
    url = "/api/v1/preferences"
    assert_error(
        api.patch(url, {"preferred_provider": "anthropic", "preferred_model": "gpt-5"}, format="json"),
        400,
        "gpt-5 is not a model of anthropic",
    )
    assert_error(api.patch(url, {"preferred_provider": "openai", "preferred_model": "gpt-7"}, format="json"), 400, "not a model of openai")
    assert_error(api.patch(url, {"preferred_provider": "nope"}, format="json"), 400, "Unknown provider 'nope'")
    assert api.patch(url, {"preferred_provider": "openai", "preferred_model": "gpt-5"}, format="json").status_code == 200
    # A field changed alone is checked with the other as stored.
    assert_error(api.patch(url, {"preferred_provider": "anthropic"}, format="json"), 400, "gpt-5 is not a model of anthropic")
    assert api.get(url).json()["preferred_provider"] == "openai"
