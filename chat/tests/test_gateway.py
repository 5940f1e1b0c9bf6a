"""The OpenAI-compatible gateway (/v1/chat/completions, /v1/models), driven by the official
`openai` SDK against the real ASGI server (gunicorn + uvicorn, config/tests/serving.py):
pytest-django's live_server is a WSGI thread, which buffers an async stream whole, so a
client going away mid-stream could not be seen there.

Every call is counted on the ledger by its request id (the completion's id is
`chatcmpl-<request id>`): exactly one row per call, none for a refused one."""

import json
import math
import time

import httpx
import httpx2
import openai
import pytest
import yaml
from django.core.handlers.wsgi import WSGIHandler

from accounts.services import api_key_create, provider_credential_set
from accounts.tests.factories import make_user
from accounts.tests.test_api import session_client
from analytics.buffer import buffer_flush
from analytics.models import ApiLog, TokenUsage
from billing.tests.factories import make_plans, organization_of, put_on_plan
from chat.models import Conversation, Message
from chat.providers.base import SENTENCES
from chat.tests import test_query_budget
from chat.tests.factories import make_catalog, price_add
from chat.tests.provider_servers import Reply, openai_completion
from chat.tests.provider_servers import openai_error as provider_error
from config.db import rls
from config.tests.serving import served

pytestmark = pytest.mark.django_db(transaction=True)
queries = test_query_budget.queries  # the fixture counting every statement
STORE = {"X-Confab-Store": "true"}


@pytest.fixture(scope="module")
def base(django_db_setup, django_db_blocker):
    """One server for the module; echo answers a word every 0.1 s (an interruption has time to land)."""
    with django_db_blocker.unblock(), served(workers=1, CHAT_ECHO_DELAY="0.1") as url:
        yield url


@pytest.fixture
def plans():
    make_catalog()  # a transactional test's flush removed the seeded catalog and plans
    return make_plans()


def _secret(user, scopes=("chat:read", "chat:write")) -> str:
    with rls.privileged(reason="test: issue an API key"):
        return api_key_create(user=user, name="gateway", scopes=list(scopes))[1]


def _client(base: str, secret: str) -> openai.OpenAI:
    # No retries: a refusal must reach the test as it was answered (the SDK retries 429 and 5xx).
    return openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=30)


@pytest.fixture
def alice(plans):
    return make_user(email="alice@example.com")


@pytest.fixture
def sdk(base, alice):
    return _client(base, _secret(alice))


def _rows(completion_id: str) -> list[TokenUsage]:
    with rls.privileged(reason="test"):
        return list(TokenUsage.objects.filter(request_id=completion_id.removeprefix("chatcmpl-")))


def _conversations(user) -> list[Conversation]:
    with rls.privileged(reason="test"):
        return list(Conversation.objects.filter(user_id=user.pk))


def test_a_reply_is_metered_once_and_not_stored_by_default(sdk, alice):
    completion = sdk.chat.completions.create(
        model="echo-1",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first\tquestion\r\n"},  # tabs and newlines are text, not control characters
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "gateway"}]},
        ],
        max_tokens=50,
        temperature=0.2,
        user="ignored-end-user-id",
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "echo-1"
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "You said: hello gateway", "stop")
    # Echo counts words: every message of the request is the prompt (2 + 2 + 2 + 2), the reply is 4.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (8, 4, 12)
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    [row] = _rows(completion.id)
    assert (row.input_tokens, row.output_tokens, row.success, row.user_id) == (8, 4, True, alice.pk)
    assert row.conversation_id is None and row.message_id is None
    assert _conversations(alice) == []


def test_the_output_cap_is_the_clients_and_never_above_the_plans(sdk, alice, plans):
    capped = sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "one two three four five"}], max_tokens=3)
    assert (capped.choices[0].message.content, capped.usage.completion_tokens, capped.choices[0].finish_reason) == (
        "You said: one",
        3,
        "length",
    )
    streamed = list(
        sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "one two three"}], max_tokens=3, stream=True)
    )
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == ["length"]
    plans["free"].max_output_tokens = 2
    with rls.privileged(reason="test"):
        plans["free"].save()
    asked_more = sdk.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "one two three four five"}], max_completion_tokens=100
    )
    assert asked_more.choices[0].message.content == "You said:" and asked_more.usage.completion_tokens == 2


def test_a_stream_ends_with_a_usage_chunk_equal_to_the_ledger_row(sdk, alice):
    chunks = list(
        sdk.chat.completions.create(
            model="echo-1",
            messages=[{"role": "user", "content": "stream this please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream this please"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    *_, last = chunks
    assert last.choices == [] and all(c.usage is None for c in chunks[:-1])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 5, 8)
    [row] = _rows(last.id)
    assert (row.input_tokens, row.output_tokens, row.success, row.conversation_id) == (3, 5, True, None)
    assert _conversations(alice) == []

    plain = list(sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "no usage"}], stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"
    assert len(_rows(plain[-1].id)) == 1


def test_an_interrupted_stream_is_metered_once_as_interrupted(sdk, alice):
    words = " ".join(f"w{n}" for n in range(30))  # ~3 s of echo at 0.1 s a word
    stream = sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": words}], stream=True)
    seen = []
    for chunk in stream:
        seen.append(chunk)
        if len(seen) == 2:
            break
    stream.close()
    deadline = time.monotonic() + 15
    while not (rows := _rows(seen[0].id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    [row] = rows
    assert row.error == "The client stopped reading the reply." and row.success and row.estimated
    # Estimated (ceil(characters / 4)): the provider never reported; the output is the part produced, not the reply.
    assert row.input_tokens == math.ceil(len(words) / 4) and 1 <= row.output_tokens < 32
    time.sleep(0.5)
    assert len(_rows(seen[0].id)) == 1


def test_a_refused_call_is_a_clean_sdk_error_and_meters_nothing(base, sdk, alice, plans):
    plans["free"].monthly_tokens = 5
    with rls.privileged(reason="test"):
        plans["free"].save()
    with pytest.raises(openai.APIStatusError) as quota:
        sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "more than five tokens of room, surely"}])
    assert quota.value.status_code == 402
    assert "5 tokens a month" in quota.value.message
    assert quota.value.body["type"] == "insufficient_quota" and set(quota.value.body) == {"message", "type", "param", "code"}

    put_on_plan(organization_of(alice), plans["pro"])
    plans["pro"].requests_per_minute = 1
    with rls.privileged(reason="test"):
        plans["pro"].save()
    sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "first"}])
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "second"}])
    assert limited.value.status_code == 429 and int(limited.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):  # a refused stream is refused before it starts
        sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "third"}], stream=True)
    with rls.privileged(reason="test"):
        assert TokenUsage.objects.filter(user_id=alice.pk).count() == 1  # the one allowed call


def test_the_entitlement_estimate_counts_every_message_of_the_request(sdk, alice, plans):
    plans["free"].monthly_tokens = 50
    with rls.privileged(reason="test"):
        plans["free"].save()
    short = [{"role": "user", "content": "hi"}]
    assert sdk.chat.completions.create(model="echo-1", messages=short, max_tokens=5).choices[0].message.content == "You said: hi"
    long_history = [{"role": "system", "content": "x" * 400}, *short]  # ~100 tokens before the question
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model="echo-1", messages=long_history, max_tokens=5)
    assert refused.value.status_code == 402 and "50 tokens a month" in refused.value.message


def test_keys_and_scopes(base, sdk, alice):
    with pytest.raises(openai.AuthenticationError) as bad:
        _client(base, "ck_aaaaaaaaaa_" + "x" * 40).models.list()
    assert bad.value.body["type"] == "authentication_error" and "Unknown API key" in bad.value.message
    with pytest.raises(openai.AuthenticationError):
        _client(base, "not-a-confab-key").chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}])
    reader = _client(base, _secret(alice, scopes=["chat:read"]))
    assert "echo-1" in {m.id for m in reader.models.list()}
    with pytest.raises(openai.PermissionDeniedError, match="chat:write"):
        reader.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}])
    writer_only = _client(base, _secret(alice, scopes=["chat:write"]))
    with pytest.raises(openai.PermissionDeniedError, match="chat:read"):
        writer_only.models.list()
    # A signed-in browser session is no way in (so no CSRF surface): only a key is.
    response = session_client(alice).get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    # Every gateway request is in the API log, as the API's are.
    buffer_flush("api_log")
    with rls.privileged(reason="test"):
        logged = set(ApiLog.objects.values_list("route", "status"))
    assert {("v1/models", 200), ("v1/models", 401), ("v1/chat/completions", 401), ("v1/chat/completions", 403)} <= logged


def test_models_list_the_catalog_and_a_shared_name_routes_by_provider(alice, plans):
    # In process (WSGI, no stream here): the server's own catalog cache would take its 10 s to see the new price.
    http = httpx2.Client(transport=httpx2.WSGITransport(app=WSGIHandler()))
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=_secret(alice), max_retries=0, http_client=http)
    price_add(provider="openai", model="echo-1", input_price="1.00", output_price="2.00")  # now two providers offer echo-1
    price_add(provider="openai", model="gpt-retired", input_price="1.00", output_price="2.00", is_active=False)
    models = {m.id: m for m in sdk.models.list()}
    assert {"gpt-4o-mini", "claude-haiku-4-5", "echo/echo-1", "openai/echo-1"} <= set(models)
    assert "echo-1" not in models and "gpt-retired" not in models
    assert models["gpt-4o-mini"].owned_by == "openai" and models["gpt-4o-mini"].object == "model"
    with pytest.raises(openai.BadRequestError, match="several providers") as ambiguous:
        sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}])
    assert ambiguous.value.body["code"] == "model_ambiguous" and ambiguous.value.body["param"] == "model"
    routed = sdk.chat.completions.create(model="echo/echo-1", messages=[{"role": "user", "content": "hi"}])
    assert routed.choices[0].message.content == "You said: hi" and _rows(routed.id)[0].provider == "echo"


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"model": "gpt-nonexistent"}, "model", "does not exist in the catalog"),
        ({"model": "gpt\x00-4o"}, "model", "control characters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "not supported"),
        ({"n": 2}, "n", "Only n=1"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, None, "image_url"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages[0]", "not supported"),
        ({"messages": [{"role": "user", "content": "bell \x07 rings"}]}, "messages[0].content", "control characters"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, None, "must be the user's"),
        ({"messages": []}, "messages", "non-empty"),
        ({"temperature": 3}, "temperature", "between 0 and 2"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only when stream is true"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "a string or a list of text parts"),
    ],
)
def test_invalid_requests_are_400_with_the_reason_and_meter_nothing(sdk, alice, fields, param, fragment):
    request = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**request)
    body = refused.value.body
    assert body["type"] == "invalid_request_error" and fragment in body["message"]
    if param:
        assert body["param"] == param
    with rls.privileged(reason="test"):
        assert not TokenUsage.objects.exists()


def test_malformed_bodies_unknown_paths_and_methods_answer_in_openais_shape(base, sdk, alice):
    headers = {"Authorization": f"Bearer {_secret(alice)}", "Content-Type": "application/json"}
    deep = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.BadRequestError, match="nested deeper"):
        sdk.chat.completions.create(**deep, extra_body={"metadata": json.loads("[" * 100 + "]" * 100)})
    # What no SDK sends: a broken body, a path and a method the gateway does not serve.
    broken = httpx.post(f"{base}/v1/chat/completions", content=b'{"model": "echo-1", "messages": [', headers=headers)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    array = httpx.post(f"{base}/v1/chat/completions", content=b"[1, 2]", headers=headers)
    assert array.status_code == 400 and "JSON object" in array.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="echo-1", input="hi")
    missing = httpx.get(f"{base}/v1/nowhere", headers=headers)
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong_method = httpx.get(f"{base}/v1/chat/completions", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(f"{base}/v1/chat/completions", json=deep, headers={**headers, "X-Confab-Store": "perhaps"}).status_code == 400


def test_the_store_header_keeps_the_call_as_a_conversation_of_the_keys_user_only(base, sdk, alice):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "keep me"}]
    raw = sdk.chat.completions.with_raw_response.create(model="echo-1", messages=messages, extra_headers=STORE)
    completion = raw.parse()
    [conversation] = _conversations(alice)
    assert raw.headers["x-confab-conversation-id"] == str(conversation.pk)
    with rls.privileged(reason="test"):
        stored = list(Message.objects.filter(conversation_id=conversation.pk).order_by("sequence").values_list("role", "content", "status"))
    assert stored == [
        ("system", "Be brief.", "complete"),
        ("assistant", "Hi!", "complete"),
        ("user", "keep me", "complete"),
        ("assistant", "You said: keep me", "complete"),
    ]
    [row] = _rows(completion.id)
    assert row.conversation_id == conversation.pk and row.message_id is not None
    assert conversation.total_tokens == row.input_tokens + row.output_tokens

    streamed = list(sdk.chat.completions.create(model="echo-1", messages=messages, stream=True, extra_headers=STORE))
    assert len(_conversations(alice)) == 2 and len(_rows(streamed[0].id)) == 1

    # Another tenant's key: its calls are its own, and alice's conversation is not reachable with it.
    bob = make_user(email="bob@example.com")
    bob_secret = _secret(bob)
    bob_completion = _client(base, bob_secret).chat.completions.create(model="echo-1", messages=messages, extra_headers=STORE)
    assert [r.user_id for r in _rows(bob_completion.id)] == [bob.pk]
    assert len(_conversations(bob)) == 1 and len(_conversations(alice)) == 2
    as_bob = httpx.get(f"{base}/api/v1/conversations/{conversation.pk}", headers={"Authorization": f"Bearer {bob_secret}"})
    assert as_bob.status_code == 404
    listed = httpx.get(f"{base}/api/v1/conversations", headers={"Authorization": f"Bearer {bob_secret}"}).json()
    assert [c["id"] for c in listed["results"]] == [str(_conversations(bob)[0].pk)]


def test_a_provider_failure_is_a_502_with_its_sentence_and_a_failed_ledger_row(sdk, alice, server):
    with rls.privileged(reason="test"):
        provider_credential_set(user=alice, provider="openai", api_key="sk-user-own-key-1234567890", base_url=f"{server.url}/v1")
    refused = Reply(status=401, body=provider_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
    server.queue(
        Reply(body=openai_completion("Paris.", {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14})), refused, refused
    )
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Capital of France?"}]}
    ok = sdk.chat.completions.create(**ask)
    assert (ok.choices[0].message.content, ok.usage.prompt_tokens, ok.usage.completion_tokens) == ("Paris.", 12, 2)
    assert server.received[0].body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(**ask)
    assert failed.value.status_code == 502 and failed.value.body["message"] == SENTENCES["auth"]
    with pytest.raises(openai.APIError, match="rejected the API key"):  # mid-stream: an error event, as OpenAI sends one
        list(sdk.chat.completions.create(**ask, stream=True))
    with rls.privileged(reason="test"):
        rows = list(TokenUsage.objects.filter(user_id=alice.pk).order_by("created_at"))
    assert [(r.success, r.error) for r in rows] == [(True, ""), (False, SENTENCES["auth"]), (False, SENTENCES["auth"])]


def test_an_open_gateway_stream_holds_no_database_connection(alice):
    """One worker with one pooled connection: while a completion streams, a request that needs
    the database answers at once (as config/tests/test_serving.py proves for the chat API)."""
    secret = _secret(alice)
    words = " ".join(f"word{n}" for n in range(20))  # ~6 s of streaming at 0.3 s a word
    env = {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "1", "DATABASE_POOL_TIMEOUT": "5", "CHAT_ECHO_DELAY": "0.3"}
    with served(workers=1, **env) as url:
        stream = _client(url, secret).chat.completions.create(model="echo-1", messages=[{"role": "user", "content": words}], stream=True)
        first = next(iter(stream))
        started = time.perf_counter()
        models = _client(url, secret).models.list()
        seconds = time.perf_counter() - started
        rest = list(stream)
    assert "echo-1" in {m.id for m in models}
    assert seconds < 2.0  # waiting for the stream's connection would take the pool timeout (5 s), then fail
    assert rest[-1].choices[0].finish_reason == "stop" and len(_rows(first.id)) == 1


def test_an_unstored_completion_stays_within_its_query_budget(alice, queries):
    http = httpx2.Client(transport=httpx2.WSGITransport(app=WSGIHandler()))
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=_secret(alice), max_retries=0, http_client=http)
    sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "warm up"}])
    queries.clear()

    completion = sdk.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hello budget"}])

    assert completion.choices[0].message.content == "You said: hello budget"
    path = [(alias, sql) for alias, sql in queries if sql.strip() != "RESET ALL"]
    statements = "\n".join(f"{alias}: {sql.strip()[:120]}" for alias, sql in path)
    # 6 statements through a cursor, all on the app role: the key and its owner (1); prepare: the
    # personal organization, subscription + plan, the PendingCall INSERT (3); finish: the
    # PendingCall DELETE, the ledger INSERT (2). The PendingCall pair lets the stale pass meter a
    # call whose worker dies (test_pending_calls.py). Each transaction's RLS context goes with its
    # BEGIN, not through a cursor (config/db/rls.py). No conversation, no messages: the chat API's
    # stored send takes 4 (test_query_budget.py).
    assert len(path) == 6, statements
    assert {alias for alias, _ in path} == {"default"}, statements


def test_the_gateway_is_left_out_of_our_openapi_schema(client):
    """Its schema is OpenAI's (README, "Gateway"); ours documents /api/v1/ only."""
    schema = yaml.safe_load(client.get("/api/schema/").content)
    assert not [path for path in schema["paths"] if path.startswith("/v1/")]
    assert "/api/v1/models" in schema["paths"]
