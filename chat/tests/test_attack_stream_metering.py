"""Streamed replies as an attacker finds them (review of 2026-12-03; chat/streaming.py,
chat/gateway.py, chat.services.message_stream and the adapters' stream parsing): a reader who
leaves after the provider counted a reasoning model's thinking, text after OpenAI's usage chunk,
a 200 that answers nothing, provider refusals the gateway called retryable 502s, and finish
reasons lost on the way. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from analytics.models import TokenUsage
from billing.models import Plan
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.tests.provider_servers import (
    Reply,
    anthropic_error,
    anthropic_stream,
    gemini_stream,
    openai_completion,
    openai_error,
    openai_stream,
    sse,
)
from chat.tests.test_attack_wire import KEYS, MODELS, OK_OPENAI, _metered_once, _rows, _secret, _stored, wired  # noqa: F401  (wired: a fixture)
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _stream(user, provider: str, content: str = "Capital of France?"):
    pending = services.message_prepare(user=user, content=content, provider=provider, model=MODELS[provider])

    async def read():
        events = [event async for event in services.message_stream(pending=pending)]
        await services.stream_endings_wait()
        return events

    events = async_to_sync(read)()
    return _stored(pending.message.pk), events


def _gateway(secret: str, body: dict, **headers):
    client = Client(raise_request_exception=False)
    return client.post(
        "/v1/chat/completions", json.dumps(body).encode(), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}", **headers
    )


# --- 1. A client gone mid-stream: the counts the provider already reported are thrown away ----------


@pytest.mark.parametrize("provider", ["gemini", "anthropic"])
def test_a_client_gone_mid_stream_keeps_the_counts_the_provider_already_reported(wired, server, provider):  # noqa: F811
    """The reader goes away after the first delta, while the provider is between chunks. Gemini had
    already reported its running totals (1,000 prompt tokens, 5,000 thinking tokens, 2 reply
    tokens), Anthropic its message_start (1,000 input tokens, and a thinking block). The adapters'
    own drop path keeps those counts exactly ("A stream cut midway keeps the last totals exactly"),
    but message_stream's client-gone path knows only a `Done`'s usage: it meters
    `interrupted_usage(None, ...)`, the prompt estimated from its 18 characters (5 tokens) and the
    output from the visible reply text alone (2 tokens). The thousands of tokens the provider
    reported (and bills: thinking included) are metered as 7. A user on a managed key can repeat
    it with any reasoning model: ask, wait for the thinking, leave. Should be: the last reported
    counts exactly, only the text after them estimated (as the adapters' drop path does)."""
    if provider == "gemini":
        usage = {"promptTokenCount": 1000, "candidatesTokenCount": 2, "thoughtsTokenCount": 5000}
        server.queue(Reply(events=gemini_stream(["Hello ", "world"], [usage, usage]), stall_after=1))
    else:
        events = anthropic_stream(["Par", "is."], {"input_tokens": 1000, "output_tokens": 1}, {"input_tokens": 1000, "output_tokens": 9})
        first_text = next(i for i, e in enumerate(events) if '"text_delta"' in e)
        server.queue(Reply(events=events, stall_after=first_text + 1))
    pending = services.message_prepare(user=wired, content="Capital of France?", provider=provider, model=MODELS[provider])

    async def run():
        delta = asyncio.Event()

        async def drain():
            async for event in services.message_stream(pending=pending):
                if event["type"] == "delta":
                    delta.set()

        task = asyncio.ensure_future(drain())
        await asyncio.wait_for(delta.wait(), 10)
        task.cancel()  # the client goes away, the provider still between chunks
        with pytest.raises(asyncio.CancelledError):
            await task
        await services.stream_endings_wait()

    async_to_sync(run)()
    message = _stored(pending.message.pk)
    assert message.status == "interrupted" and message.error == services.CLIENT_GONE
    if provider == "gemini":
        assert (message.input_tokens, message.output_tokens) == (1000, 5002), (message.input_tokens, message.output_tokens)
    else:
        # message_start's input, exactly; the thinking and the text that arrived, estimated.
        assert message.input_tokens == 1000, (message.input_tokens, message.output_tokens)
        assert message.output_tokens >= 5, (message.input_tokens, message.output_tokens)  # "Let me think." + "Par"
    _metered_once(wired)


# --- 2. Text after OpenAI's usage chunk -----------------------------------------------------------


def test_text_after_openais_usage_chunk_is_not_an_unmetered_part_of_the_reply(wired, server):  # noqa: F811
    """The usage chunk (empty choices) is the last of a stream: the adapter trusts it as counting
    everything ("The usage chunk comes last: if it arrived, it counted everything"). A server that
    sends more content after it (before [DONE]) has that text appended to the reply, delivered and
    stored, but metered as the 2 output tokens the usage said, flagged exact. (Anthropic's adapter
    stops at message_stop for the same reason.) Should be: the text after the final usage is either
    not part of the reply, or metered (estimated and flagged)."""
    events = openai_stream(["Par", "is."], OK_OPENAI)
    injected = sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": " and a great many more words after the usage was counted"}}],
        }
    )
    events.insert(len(events) - 1, injected)  # after the usage chunk, before [DONE]
    server.queue(Reply(events=events))
    message, stream_events = _stream(wired, "openai")
    delivered = "".join(e["text"] for e in stream_events if e["type"] == "delta")
    assert message.content == delivered
    unmetered = message.content != "Paris." and message.output_tokens == 2 and not message.metadata["estimated"]
    assert not unmetered, (message.content, message.output_tokens, message.metadata["estimated"])
    _metered_once(wired)


# --- 3. A streamed call answered by a 200 whose body is an error, or by nothing ----------------------


@pytest.mark.parametrize(
    ("provider", "reply"),
    [
        ("openai", Reply(body=openai_error(500, "The server had an error while processing your request.", "server_error"))),
        ("anthropic", Reply(body=anthropic_error("overloaded_error", "Overloaded"))),
        ("openai", Reply(events=[sse("[DONE]")])),
        ("anthropic", Reply(events=[])),
        ("gemini", Reply(events=[])),
    ],
    ids=["openai 200 error body", "anthropic 200 error body", "openai only [DONE]", "anthropic empty stream", "gemini empty stream"],
)
def test_a_stream_that_answers_nothing_is_a_failed_call_not_an_empty_complete_reply(wired, server, provider, reply):  # noqa: F811
    """Proxies and compatible servers answer `200 {"error": ...}` (as test_attack_wire notes; the
    whole-reply adapters now read it as a failed call through error_in_body). Asked for a stream,
    the same server answers the same JSON: the SDKs' SSE decoders find no `data:` line in it, so the
    stream yields nothing and ends, as does a stream with no chunk at all. The adapter yields a
    `Done` with an estimated prompt: the reply is stored `complete` with no text and no error, the
    ledger row a success billed a prompt the provider never answered, and the user sees an empty
    reply with nothing saying something went wrong. Should be: a failed call with a sentence, as
    for the whole reply."""
    server.queue(reply)
    message, events = _stream(wired, provider)
    assert message.status == "failed" and message.error, (message.status, message.content, message.error, message.input_tokens)
    [row] = _rows(message)
    assert not row.success
    assert events[-1]["type"] == "done"
    _metered_once(wired)


def _streamed_body(response) -> str:
    async def read():
        body = b"".join([chunk async for chunk in response.streaming_content])
        await services.stream_endings_wait()
        return body

    try:
        return async_to_sync(read)().decode()
    finally:
        response.close()


# --- 4. The gateway: a provider's refusal loses its status --------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "kind"),
    [
        (
            Reply(
                status=400,
                body=openai_error(
                    400,
                    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                ),
            ),
            400,
            "invalid_request_error",
        ),
        (
            Reply(
                status=429, body=openai_error(429, "Rate limit reached.", "requests", "rate_limit_exceeded"), headers={"retry-after": "20"}
            ),
            429,
            "rate_limit_error",
        ),
    ],
    ids=["prompt too long", "rate limited"],
)
def test_the_gateway_answers_a_provider_refusal_with_its_own_status_not_a_retryable_502(wired, server, reply, status, kind):  # noqa: F811
    """Through /v1/chat/completions (not streamed) every provider failure is a 502 server_error
    (gateway.ProviderFailed), though the ProviderError knew better (providers/base.STATUS_CODES):
    a prompt too long for the model is the caller's request (400, which no retry fixes), a rate
    limit a 429 with the provider's wait. The official SDKs retry a 502 by default (openai-python:
    twice, at once), so a client with defaults sends the too-long prompt three times, each a
    metered failed call on the user's key, and ignores the provider's Retry-After. Should be: the
    ProviderError's status in OpenAI's shape (400 invalid_request_error; 429 rate_limit_error with
    Retry-After)."""
    server.queue(reply)
    response = _gateway(_secret(wired), {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Capital of France?"}]})
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.json()["error"]["type"] == kind
    if status == 429:
        assert response.headers.get("Retry-After") == "20", dict(response.headers)
    _metered_once(wired)


# --- 5. The gateway: a cached reply that was cut says it stopped -----------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_cached_reply_that_was_cut_at_max_tokens_keeps_finish_reason_length(alice, plans, stream):
    """The response cache keeps a complete reply's text and usage, not its finish reason, and
    _reply_finish stores a hit with finish_reason None, which the gateway answers as "stop". The
    same request (max_tokens 2) answers `finish_reason: "length"` the first time and `"stop"` once
    it is served from the cache: a client that checks for truncation (as OpenAI documents) takes the
    cut reply for a whole one. Should be: the hit answers the reason the reply ended with."""
    with rls.privileged(reason="test: a plan with the response cache"):
        Plan.objects.filter(pk=plans["pro"].pk).update(response_cache=True)
    put_on_plan(organization_of(alice), Plan.objects.get(pk=plans["pro"].pk))
    secret = _secret(alice)
    ask = {"model": "echo-1", "messages": [{"role": "user", "content": "one two three four five"}], "max_tokens": 2, "stream": stream}

    def finish_of(response) -> str:
        assert response.status_code == 200, response.content[:300]
        if not stream:
            return response.json()["choices"][0]["finish_reason"]
        body = _streamed_body(response)
        chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
        return [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]][-1]

    first = finish_of(_gateway(secret, ask, HTTP_X_RESPONSE_CACHE="any"))
    again = _gateway(secret, ask, HTTP_X_RESPONSE_CACHE="any")
    second = finish_of(again)
    with rls.privileged(reason="test"):
        hits = TokenUsage.objects.filter(user_id=alice.pk, cache_hit=True).count()
    assert hits == 1  # the second was served from the cache
    assert (first, second) == ("length", "length")


# --- 6. The gateway: a reply the provider filtered says it stopped --------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_the_gateway_keeps_a_content_filter_finish_reason(wired, server, stream):  # noqa: F811
    """OpenAI (and Azure, and compatible servers) end a reply their filter cut with
    `finish_reason: "content_filter"`, which OpenAI's clients check to tell a filtered reply from a
    whole one. The gateway's _finish_reason knows only "length" and turns everything else into
    "stop" (the whole-reply path never even reads the provider's reason: _complete answers
    "length" or "stop" from the usage alone): a reply the provider's filter cut off midway reaches
    the caller as a whole answer. Should be: "content_filter" passed on (Gemini's SAFETY too)."""
    if stream:
        events = openai_stream(["Here is how to"], OK_OPENAI)
        events[-3] = sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "gpt-test",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}],
            }
        )
        server.queue(Reply(events=events))
    else:
        body = openai_completion("Here is how to", OK_OPENAI)
        body["choices"][0]["finish_reason"] = "content_filter"
        server.queue(Reply(body=body))
    ask = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Capital of France?"}], "stream": stream}
    response = _gateway(_secret(wired), ask)
    assert response.status_code == 200, response.content[:300] if not stream else response
    if stream:
        chunks = [json.loads(line[6:]) for line in _streamed_body(response).splitlines() if line.startswith("data: {")]
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
    else:
        reasons = [response.json()["choices"][0]["finish_reason"]]
    assert reasons == ["content_filter"], reasons
    _metered_once(wired)
