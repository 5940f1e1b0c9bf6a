"""Attack probes on the gateway (/v1/chat/completions): hostile bodies are a 400 in OpenAI's
shape, never a 500, and meter nothing."""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import Client

from accounts.services import api_key_create
from accounts.tests.factories import make_user
from analytics.models import TokenUsage
from billing.tests.factories import make_plans
from chat import gateway, services
from chat.models import Conversation, Message
from chat.tests.factories import make_catalog
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
HELLO = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def key():
    make_catalog()
    make_plans()
    user = make_user(email="alice@example.com")
    with rls.privileged(reason="test: issue an API key"):
        return user, api_key_create(user=user, name="gateway", scopes=["chat:read", "chat:write"])[1]


def _post(secret: str, raw: bytes, **headers):
    client = Client(raise_request_exception=False)
    return client.post("/v1/chat/completions", raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}", **headers)


BODIES = {
    "lone surrogate in content": b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
    "lone surrogate in a text part": b'{"model": "echo-1", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
    "lone surrogate in a part type": b'{"model": "echo-1", "messages": [{"role": "user", "content": [{"type": "\\ud800"}]}]}',
    "lone surrogate in the model": b'{"model": "echo-\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
    "temperature NaN": b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "temperature Infinity": b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
    "temperature 1e400": b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
    "NUL in the model": json.dumps({**HELLO, "model": "echo\x00-1"}).encode(),
    "messages an object": json.dumps({**HELLO, "messages": {"role": "user", "content": "hi"}}).encode(),
    "stream_options a list": json.dumps({**HELLO, "stream": True, "stream_options": [1]}).encode(),
    "n a list": json.dumps({**HELLO, "n": [1]}).encode(),
    "tool_choice a dict": json.dumps({**HELLO, "tool_choice": {"type": "none"}}).encode(),
    "content 10 MB": json.dumps({**HELLO, "messages": [{"role": "user", "content": "x" * 10_000_000}]}).encode(),
    "nested 10,000 deep": b'{"model": "echo-1", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
}


@pytest.mark.parametrize("name", list(BODIES))
def test_a_hostile_body_is_a_400_in_openais_shape(key, name):
    user, secret = key
    for headers in ({}, {"HTTP_X_CONFAB_STORE": "true"}):
        response = _post(secret, BODIES[name], **headers)
        assert response.status_code == 400, (response.status_code, response.content[:300])
        assert response.json()["error"]["type"] == "invalid_request_error"
    with rls.privileged(reason="test"):
        assert not TokenUsage.objects.exists() and not Conversation.objects.exists()


def test_max_tokens_beyond_any_integer_column_is_capped_by_the_plan(key):
    user, secret = key
    response = _post(secret, json.dumps({**HELLO, "max_tokens": 10**30}).encode())
    assert response.status_code == 200, response.content[:300]
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi"


# A client gone at the last delta, or holding the finish chunk: message_stream's ending is shielded
# (it failed 3 of 3 at the last delta before), so the reply is stored and metered once either way.
@pytest.mark.parametrize("cancel_at", ["last delta", "finish chunk"])
def test_a_stream_cancelled_as_it_finishes_is_metered_once_and_closed(key, cancel_at):
    user, _ = key
    pending = services.message_prepare(user=user, content="one two three", provider="echo", model="echo-1")
    seen: list[str] = []
    busy: list[asyncio.Future] = []

    async def read():
        async for chunk in gateway._chunks(pending, include_usage=True):
            seen.append(chunk)
            finishing = '"finish_reason": "stop"' in chunk if cancel_at == "finish chunk" else "three" in chunk
            if finishing:
                # Another request holds the one sync thread for a moment (as under load), and the
                # client goes away at this very moment: the reply's store waits its turn.
                busy.append(asyncio.ensure_future(sync_to_async(time.sleep)(0.3)))
                await asyncio.sleep(0)
                asyncio.current_task().cancel()

    async def run():
        with pytest.raises(asyncio.CancelledError):
            await asyncio.ensure_future(read())
        await asyncio.gather(*busy)
        await services.stream_endings_wait()  # the ending runs on after the cancelled task

    async_to_sync(run)()
    with rls.privileged(reason="test"):
        message = Message.objects.get(pk=pending.message.pk)
        rows = list(TokenUsage.objects.filter(request_id=pending.message.metadata["request_id"]))
    assert message.status in ("complete", "interrupted") and len(rows) == 1, (message.status, len(rows), seen)
    assert rows[0].output_tokens == message.output_tokens
