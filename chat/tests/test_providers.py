"""Provider adapters against local servers speaking each provider's wire format (never the internet)."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from chat.providers import PROVIDERS, ChatMessage, ChatRequest, Counted, Delta, Done, ProviderError, Usage, echo, provider_for
from chat.providers.openai_api import usage_from_openai
from chat.tests.provider_servers import (
    ProviderServer,
    Reply,
    anthropic_error,
    anthropic_message,
    anthropic_stream,
    gemini_error,
    gemini_response,
    gemini_stream,
    openai_completion,
    openai_error,
    openai_stream,
    sse,
)

pytestmark = pytest.mark.anyio

MESSAGES = (ChatMessage("system", "Be brief."), ChatMessage("user", "What is the capital of France?"))
PROMPT_ESTIMATE = 3 + 8  # ceil(9 / 4) + ceil(30 / 4)
PARTS = ["Hello ", "world, ", "this is cut"]


def request_for(provider: str, server: ProviderServer, **overrides) -> ChatRequest:
    base_url = f"{server.url}/v1" if provider == "openai" else server.url
    fields = {"model": f"{provider}-test", "messages": MESSAGES, "base_url": base_url, "api_key": "test-key", "timeout": 5.0, **overrides}
    return ChatRequest(**fields)


async def collect(provider: str, request: ChatRequest) -> tuple[list[str], Done]:
    """The deltas and the one Done; a Counted (usage so far) may come between, never after the Done,
    and never counts more than the Done does."""
    deltas, done, counted = [], None, []
    async for event in provider_for(provider).stream(request):
        if isinstance(event, Delta):
            deltas.append(event.text)
        elif isinstance(event, Counted):
            assert done is None
            counted.append(event.usage)
        else:
            assert done is None
            done = event
    assert all(c.input_total <= done.usage.input_total and c.output <= done.usage.output for c in counted if not c.estimated)
    return deltas, done


async def call(provider: str, request: ChatRequest, mode: str):
    if mode == "stream":
        return await collect(provider, request)
    return await provider_for(provider).complete(request)


def classes(usage: Usage) -> tuple[int, ...]:
    return (usage.input_uncached, usage.cache_read, usage.cache_write_5m, usage.cache_write_1h, usage.output, usage.reasoning)


# Usage payloads with every class present, and what each normalizes to.
OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 800, "cache_write_tokens": 100, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 120,
        "rejected_prediction_tokens": 5,
        "accepted_prediction_tokens": 0,
        "audio_tokens": 0,
    },
}
OPENAI_CLASSES = (300, 800, 100, 0, 300, 120)
ANTHROPIC_CACHE = {
    "input_tokens": 50,
    "cache_read_input_tokens": 2000,
    "cache_creation_input_tokens": 700,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 200},
}
ANTHROPIC_USAGE = {**ANTHROPIC_CACHE, "output_tokens": 400, "output_tokens_details": {"thinking_tokens": 150}}
# message_delta's usage is cumulative and repeats the input and cache counts: never added twice.
ANTHROPIC_DELTA_USAGE = {
    "input_tokens": 50,
    "cache_read_input_tokens": 2000,
    "cache_creation_input_tokens": 700,
    "output_tokens": 400,
    "output_tokens_details": {"thinking_tokens": 150},
}
ANTHROPIC_CLASSES = (50, 2000, 500, 200, 400, 150)
GEMINI_USAGE = {
    "promptTokenCount": 1000,
    "cachedContentTokenCount": 600,
    "candidatesTokenCount": 200,
    "thoughtsTokenCount": 80,
    "toolUsePromptTokenCount": 30,
    "totalTokenCount": 1310,
}
GEMINI_CLASSES = (430, 600, 0, 0, 280, 80)


def gemini_running(candidates: int) -> dict:
    return {**GEMINI_USAGE, "candidatesTokenCount": candidates, "totalTokenCount": 1110 + candidates}


SUCCESS = {
    "openai": (
        Reply(body=openai_completion("Paris.", OPENAI_USAGE)),
        Reply(events=openai_stream(["Par", "is."], OPENAI_USAGE)),
        OPENAI_CLASSES,
    ),
    "anthropic": (
        Reply(body=anthropic_message("Paris.", ANTHROPIC_USAGE)),
        Reply(events=anthropic_stream(["Par", "is."], {**ANTHROPIC_CACHE, "output_tokens": 1}, ANTHROPIC_DELTA_USAGE)),
        ANTHROPIC_CLASSES,
    ),
    "gemini": (
        Reply(body=gemini_response("Paris.", GEMINI_USAGE, thought="Capital of France.")),
        Reply(events=gemini_stream(["Par", "is."], [gemini_running(100), gemini_running(200)], thought="Capital of France.")),
        GEMINI_CLASSES,
    ),
}


def test_registry_names_every_provider_and_refuses_unknown_ones():
    assert set(PROVIDERS) == {"echo", "openai", "anthropic", "gemini"}
    assert provider_for("echo") is echo
    with pytest.raises(ProviderError) as caught:
        provider_for("nope")
    assert caught.value.kind == "bad_request" and "nope" in caught.value.message and caught.value.status_code == 400


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_complete_normalizes_usage_exactly(server, provider):
    server.queue(SUCCESS[provider][0])
    text, usage, finish_reason = await provider_for(provider).complete(request_for(provider, server))
    assert text == "Paris." and finish_reason in {"stop", "end_turn", "STOP"}
    assert classes(usage) == SUCCESS[provider][2]
    assert not usage.estimated
    assert usage.raw  # the provider's own usage object is kept for the message's metadata


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_stream_yields_deltas_then_exact_usage(server, provider):
    server.queue(SUCCESS[provider][1])
    deltas, done = await collect(provider, request_for(provider, server))
    assert deltas == ["Par", "is."]
    assert classes(done.usage) == SUCCESS[provider][2]
    assert not done.usage.estimated
    assert done.finish_reason in {"stop", "end_turn", "STOP"}


async def test_openai_stream_always_asks_for_usage_in_the_last_chunk(server):
    server.queue(SUCCESS["openai"][1])
    await collect("openai", request_for("openai", server, max_tokens=64))
    sent = server.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["max_tokens"] == 64  # a compatible server (base URL set) knows only max_tokens
    assert sent.headers["authorization"] == "Bearer test-key"


async def test_anthropic_sends_system_apart_and_gemini_calls_its_stream_endpoint(server):
    server.queue(SUCCESS["anthropic"][0], SUCCESS["gemini"][1])
    await provider_for("anthropic").complete(request_for("anthropic", server))
    await collect("gemini", request_for("gemini", server))
    anthropic_sent, gemini_sent = server.received
    assert anthropic_sent.path == "/v1/messages"
    assert anthropic_sent.body["system"] == "Be brief." and anthropic_sent.body["messages"] == [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    # The pinned SDK's default API version is v1 (v1beta with GOOGLE_GENAI_API_VERSION=beta).
    assert gemini_sent.path == "/v1/models/gemini-test:streamGenerateContent?alt=sse"
    assert gemini_sent.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]


def test_openai_responses_usage_normalizes_like_chat_completions():
    usage = usage_from_openai(
        {
            "input_tokens": 1200,
            "input_tokens_details": {"cached_tokens": 800},
            "output_tokens": 300,
            "output_tokens_details": {"reasoning_tokens": 120},
        }
    )
    assert classes(usage) == (400, 800, 0, 0, 300, 120)


async def test_anthropic_writes_without_a_split_are_five_minute_writes(server):
    old = {"input_tokens": 10, "cache_creation_input_tokens": 700, "cache_read_input_tokens": 0, "output_tokens": 5}
    server.queue(Reply(body=anthropic_message("Paris.", old)))
    _, usage, _ = await provider_for("anthropic").complete(request_for("anthropic", server))
    assert classes(usage) == (10, 0, 700, 0, 5, 0)


ERRORS = {
    "auth": {
        "openai": Reply(status=401, body=openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")),
        "anthropic": Reply(status=401, body=anthropic_error("authentication_error", "invalid x-api-key")),
        "gemini": Reply(status=401, body=gemini_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")),
    },
    "rate_limited": {
        "openai": Reply(
            status=429, body=openai_error(429, "Rate limit reached.", "requests", "rate_limit_exceeded"), headers={"retry-after": "7"}
        ),
        "anthropic": Reply(
            status=429,
            body=anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
            headers={"retry-after": "7"},
        ),
        "gemini": Reply(
            status=429,
            body=gemini_error(
                429, "RESOURCE_EXHAUSTED", "Quota exceeded.", [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
            ),
        ),
    },
    "context_too_long": {
        "openai": Reply(
            status=400,
            body=openai_error(
                400, "This model's maximum context length is 8192 tokens.", "invalid_request_error", "context_length_exceeded"
            ),
        ),
        "anthropic": Reply(status=400, body=anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")),
        "gemini": Reply(
            status=400,
            body=gemini_error(
                400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
            ),
        ),
    },
    "unavailable": {
        "openai": Reply(status=503, body=openai_error(503, "The server is overloaded.", "server_error")),
        "anthropic": Reply(status=529, body=anthropic_error("overloaded_error", "Overloaded")),
        "gemini": Reply(status=503, body=gemini_error(503, "UNAVAILABLE", "The model is overloaded.")),
    },
    "bad_request": {
        "openai": Reply(status=404, body=openai_error(404, "The model does not exist.", "invalid_request_error", "model_not_found")),
        "anthropic": Reply(status=404, body=anthropic_error("not_found_error", "model: nope")),
        "gemini": Reply(status=404, body=gemini_error(404, "NOT_FOUND", "models/nope is not found.")),
    },
}


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("kind", list(ERRORS))
async def test_provider_errors_become_one_kind_with_a_sentence(server, kind, provider, mode):
    server.queue(ERRORS[kind][provider])
    with pytest.raises(ProviderError) as caught:
        await call(provider, request_for(provider, server), mode)
    error = caught.value
    assert error.kind == kind
    assert error.message.endswith(".") and "Error code" not in error.message  # a sentence, not the SDK's repr
    assert error.usage is None  # rejected before answering: nothing to meter
    assert error.extra == {"kind": kind} and error.detail  # the provider's words are kept for logs, not shown
    assert len(server.received) == 1  # no SDK retry: a retried call could be billed twice
    if kind == "rate_limited":
        assert error.retry_after_seconds == 7.0 and error.retry_after == 7 and "7 seconds" in error.message


@pytest.mark.parametrize(
    "reply, kind",
    [
        # llama.cpp's server when the prompt does not fit.
        (
            Reply(
                status=400,
                body={
                    "error": {
                        "code": 400,
                        "message": "the request exceeds the available context size, try increasing it",
                        "type": "exceed_context_size_error",
                    }
                },
            ),
            "context_too_long",
        ),
        # OpenAI's out-of-credit 429: waiting will not help, so it is not a rate limit.
        (
            Reply(status=429, body=openai_error(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota")),
            "unavailable",
        ),
    ],
)
async def test_openai_compatible_error_variants(server, reply, kind):
    server.queue(reply)
    with pytest.raises(ProviderError) as caught:
        await provider_for("openai").complete(request_for("openai", server))
    assert caught.value.kind == kind


async def test_gemini_invalid_api_key_is_auth(server):
    # The Gemini API answers a bad key with 400 INVALID_ARGUMENT, not 401.
    server.queue(Reply(status=400, body=gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")))
    with pytest.raises(ProviderError) as caught:
        await provider_for("gemini").complete(request_for("gemini", server))
    assert caught.value.kind == "auth"


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_hanging_provider_times_out(server, provider, mode):
    server.queue(Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await call(provider, request_for(provider, server, timeout=0.5), mode)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 4


# Streams cut midway: events before the cut arrive, then the socket closes mid-body.
# OpenAI: 0 role, 1-3 parts, 4 finish, 5 usage, 6 [DONE]. Anthropic: 0 message_start,
# 1-4 thinking block, 5 text block start, 6 ping, 7-9 parts, 10 stop, 11 message_delta.
# Gemini: one chunk per part.


async def test_openai_stream_cut_before_its_usage_chunk_estimates_input_and_output(server):
    server.queue(Reply(events=openai_stream(PARTS, OPENAI_USAGE), cut_after=3))
    with pytest.raises(ProviderError) as caught:
        await collect("openai", request_for("openai", server))
    error = caught.value
    assert error.kind == "interrupted" and error.partial_text == "Hello world, "
    assert classes(error.usage) == (PROMPT_ESTIMATE, 0, 0, 0, 4, 0)  # ceil(13 / 4) output
    assert error.usage.estimated


async def test_openai_stream_cut_after_its_usage_chunk_is_metered_exactly(server):
    server.queue(Reply(events=openai_stream(PARTS, OPENAI_USAGE), cut_after=6))
    with pytest.raises(ProviderError) as caught:
        await collect("openai", request_for("openai", server))
    assert caught.value.kind == "interrupted" and caught.value.partial_text == "Hello world, this is cut"
    assert classes(caught.value.usage) == OPENAI_CLASSES and not caught.value.usage.estimated


async def test_anthropic_stream_cut_after_message_start_keeps_input_and_cache_exact(server):
    start = {**ANTHROPIC_CACHE, "output_tokens": 1}
    server.queue(Reply(events=anthropic_stream(PARTS, start, ANTHROPIC_DELTA_USAGE), cut_after=9))
    with pytest.raises(ProviderError) as caught:
        await collect("anthropic", request_for("anthropic", server))
    error = caught.value
    assert error.kind == "interrupted" and error.partial_text == "Hello world, "
    # Output from the text received, thinking included: ceil(len("Let me think." + "Hello world, ") / 4).
    assert classes(error.usage) == (50, 2000, 500, 200, 7, 0)
    assert error.usage.estimated


async def test_anthropic_stream_cut_before_message_start_estimates_input(server):
    server.queue(Reply(events=anthropic_stream(PARTS, {**ANTHROPIC_CACHE, "output_tokens": 1}, ANTHROPIC_DELTA_USAGE), cut_after=0))
    with pytest.raises(ProviderError) as caught:
        await collect("anthropic", request_for("anthropic", server))
    assert caught.value.kind == "interrupted" and caught.value.partial_text == ""
    assert classes(caught.value.usage) == (PROMPT_ESTIMATE, 0, 0, 0, 0, 0) and caught.value.usage.estimated


async def test_gemini_stream_cut_keeps_the_last_running_totals_and_estimates_uncounted_text(server):
    # The second chunk carries no usage: its text is the only estimate.
    server.queue(Reply(events=gemini_stream(PARTS, [gemini_running(2), None, gemini_running(9)]), cut_after=2))
    with pytest.raises(ProviderError) as caught:
        await collect("gemini", request_for("gemini", server))
    error = caught.value
    assert error.kind == "interrupted" and error.partial_text == "Hello world, "
    assert classes(error.usage) == (430, 600, 0, 0, 2 + 80 + 2, 80)  # + ceil(len("world, ") / 4)
    assert error.usage.estimated


async def test_gemini_stream_cut_right_after_a_counted_chunk_is_exact(server):
    server.queue(Reply(events=gemini_stream(PARTS, [gemini_running(2), gemini_running(5), gemini_running(9)]), cut_after=2))
    with pytest.raises(ProviderError) as caught:
        await collect("gemini", request_for("gemini", server))
    assert classes(caught.value.usage) == (430, 600, 0, 0, 85, 80) and not caught.value.usage.estimated


async def test_gemini_stream_cut_before_any_usage_estimates_input(server):
    server.queue(Reply(events=gemini_stream(PARTS, [None, None, gemini_running(9)]), cut_after=1))
    with pytest.raises(ProviderError) as caught:
        await collect("gemini", request_for("gemini", server))
    assert classes(caught.value.usage) == (PROMPT_ESTIMATE, 0, 0, 0, 2, 0) and caught.value.usage.estimated


async def test_anthropic_error_event_midway_is_an_interruption(server):
    events = anthropic_stream(PARTS, {**ANTHROPIC_CACHE, "output_tokens": 1}, ANTHROPIC_DELTA_USAGE)[:8]
    events.append(sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"))
    server.queue(Reply(events=events))
    with pytest.raises(ProviderError) as caught:
        await collect("anthropic", request_for("anthropic", server))
    assert caught.value.kind == "interrupted" and caught.value.partial_text == "Hello "
    assert classes(caught.value.usage) == (50, 2000, 500, 200, 5, 0) and caught.value.usage.estimated  # ceil(19 / 4)


STALLS = {
    "openai": (openai_stream(PARTS, OPENAI_USAGE), 2),
    "anthropic": (anthropic_stream(PARTS, {**ANTHROPIC_CACHE, "output_tokens": 1}, ANTHROPIC_DELTA_USAGE), 8),
    "gemini": (gemini_stream(PARTS, [gemini_running(2), gemini_running(5), gemini_running(9)]), 1),
}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_stream_that_stalls_midway_is_interrupted_not_a_plain_timeout(server, provider):
    events, stall_after = STALLS[provider]
    server.queue(Reply(events=events, stall_after=stall_after))
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request_for(provider, server, timeout=0.5))
    assert caught.value.kind == "interrupted" and caught.value.partial_text == "Hello "
    assert caught.value.usage.output > 0 and caught.value.usage.input_total > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_caller_that_stops_early_closes_the_connection(server, provider):
    events, stall_after = STALLS[provider]
    server.queue(Reply(events=events, stall_after=stall_after))
    replies = provider_for(provider).stream(request_for(provider, server))
    first = await anext(replies)
    while isinstance(first, Counted):  # the usage so far (a prompt's count) may come first
        first = await anext(replies)
    assert first == Delta("Hello ")
    await replies.aclose()  # what a client going away does to the view's generator
    deadline = time.monotonic() + 2
    while server.disconnects == 0 and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    assert server.disconnects == 1


async def test_openai_compatible_server_without_a_usage_chunk_is_estimated_not_free(server):
    server.queue(Reply(events=openai_stream(["Par", "is."], None)))
    deltas, done = await collect("openai", request_for("openai", server))
    assert deltas == ["Par", "is."]
    assert classes(done.usage) == (PROMPT_ESTIMATE, 0, 0, 0, 2, 0) and done.usage.estimated


def test_a_finished_event_loop_does_not_keep_its_connection_pool(server):
    # A sync caller (a Celery task, a management command) runs each call in its own loop.
    from chat.providers import base

    server.queue(SUCCESS["openai"][0], SUCCESS["openai"][0])
    loops = []

    async def one_call():
        loops.append(asyncio.get_running_loop())
        await provider_for("openai").complete(request_for("openai", server))

    asyncio.run(one_call())
    asyncio.run(one_call())
    assert loops[0] not in base._loop_pools and loops[1] in base._loop_pools
    assert len(server.received) == 2


async def test_concurrent_streams_share_one_pool(server):
    server.queue(*(Reply(events=openai_stream(["Par", "is."], OPENAI_USAGE)) for _ in range(5)))
    results = []

    async def one_stream():
        results.append(await collect("openai", request_for("openai", server)))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(one_stream)
    assert [deltas for deltas, _ in results] == [["Par", "is."]] * 5
    assert all(classes(done.usage) == OPENAI_CLASSES for _, done in results)


async def test_echo_streams_the_reply_word_by_word_with_documented_counts():
    request = ChatRequest(model="echo", messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "hello  there world")))
    deltas = []
    done = None
    started = time.monotonic()
    async for event in echo.stream(request, delay=0.02):
        if isinstance(event, Delta):
            deltas.append(event.text)
        else:
            done = event
    assert deltas == ["You ", "said: ", "hello  ", "there ", "world"]
    assert time.monotonic() - started >= 5 * 0.02
    # Whitespace words: prompt 2 + 3, reply 5; exact, nothing cached.
    assert classes(done.usage) == (5, 0, 0, 0, 5, 0) and not done.usage.estimated
    assert await echo.complete(request, delay=0) == ("You said: hello  there world", done.usage, done.finish_reason)
