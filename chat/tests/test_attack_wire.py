"""Attack probes on the wire: each provider adapter fed hostile or odd but possible responses by a
local server speaking its format, driven through the real send path (message_send, the chat API's
POST with and without ?stream=true, the OpenAI-compatible gateway). Every call must end stored (no
reply left `streaming`), metered exactly once with the tokens the provider reported (estimated and
flagged where it reported none, or nothing usable), and answered with a sentence, never a 500.

The first sections failed on the code they were written against; the last one ("What held") passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from accounts.services import api_key_create, provider_credential_set
from analytics.models import TokenUsage
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.models import Conversation, Message, PendingCall
from chat.providers.base import SENTENCES
from chat.tests.provider_servers import (
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
from chat.tests.test_attack_streams import _body_then_disconnect
from config.asgi import OneHopASGIHandler
from config.db import rls
from config.tests.asgi_scope import http_scope

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
KEYS = {
    "openai": "sk-wire-test-key-0123456789abcdef",
    "anthropic": "sk-ant-wire-test-key-0123456789abcdef",
    "gemini": "AIzaWireTestKey0123456789abcdefghijklmn",
}
OK_OPENAI = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}


# --- Helpers ------------------------------------------------------------------------------------


@pytest.fixture
def wired(alice, plans, server):
    """Alice on a paid plan, with her own key for each provider pointing at the local server."""
    put_on_plan(organization_of(alice), plans["pro"])
    with rls.privileged(reason="test: provider keys"):
        for provider in MODELS:
            base_url = f"{server.url}/v1" if provider == "openai" else server.url
            provider_credential_set(user=alice, provider=provider, api_key=KEYS[provider], base_url=base_url)
    return alice


def _send(user, provider: str, mode: str, content: str = "Capital of France?"):
    """One send through the service layer: (the reply as stored, the stream's events or None)."""
    if mode == "whole":
        reply = services.message_send(user=user, content=content, provider=provider, model=MODELS[provider])
        return _stored(reply.message.pk), None
    pending = services.message_prepare(user=user, content=content, provider=provider, model=MODELS[provider])

    async def read():
        events = [event async for event in services.message_stream(pending=pending)]
        await services.stream_endings_wait()
        return events

    events = async_to_sync(read)()
    return _stored(pending.message.pk), events


def _stored(message_id) -> Message:
    with rls.privileged(reason="test"):
        return Message.objects.get(pk=message_id)


def _rows(message: Message) -> list[TokenUsage]:
    with rls.privileged(reason="test"):
        return list(TokenUsage.objects.filter(request_id=message.metadata["request_id"]))


def _metered_once(user) -> None:
    """Nothing left streaming; each reply has exactly one ledger row equal to it; the
    conversations' totals are the sums over their replies."""
    with rls.privileged(reason="test"):
        assert not Message.objects.filter(user_id=user.pk, status=Message.Status.STREAMING).exists(), "a reply was left streaming"
        assert not PendingCall.objects.filter(user_id=user.pk).exists()
        replies = list(Message.objects.filter(user_id=user.pk, role="assistant"))
        for reply in replies:
            rows = list(TokenUsage.objects.filter(request_id=reply.metadata["request_id"]))
            assert len(rows) == 1, (reply.status, reply.error, len(rows))
            row = rows[0]
            assert (row.input_tokens, row.output_tokens, row.cost) == (reply.input_tokens, reply.output_tokens, reply.cost)
        for conversation in Conversation.objects.filter(user_id=user.pk):
            mine = [r for r in replies if r.conversation_id == conversation.pk]
            assert conversation.total_tokens == sum(r.input_tokens + r.output_tokens for r in mine)
            assert conversation.total_cost == sum((r.cost for r in mine), Decimal(0))


def _secret(user) -> str:
    with rls.privileged(reason="test: an API key"):
        return api_key_create(user=user, name="wire", scopes=["chat:read", "chat:write"])[1]


def _asgi_post(path: str, body: dict, headers: list, query: bytes = b"") -> tuple[int, dict, bytes]:
    """POST through the app's ASGI handler, read to the end: (status, headers, body)."""
    raw = json.dumps(body).encode()
    sent: list[dict] = []

    async def scenario():
        finished = asyncio.Event()
        receive = _body_then_disconnect(raw, finished)

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        scope = http_scope("POST", path, [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *headers])
        scope["query_string"] = query
        await OneHopASGIHandler()(scope, receive, send)
        await services.stream_endings_wait()

    async_to_sync(scenario)()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def _api_send(user, provider: str, stream: bool) -> tuple[int, bytes]:
    conversation = services.conversation_create(user=user)
    status, _headers, body = _asgi_post(
        f"/api/v1/conversations/{conversation.pk}/messages",
        {"content": "Capital of France?", "provider": provider, "model": MODELS[provider]},
        [(b"authorization", f"Bearer {_secret(user)}".encode())],
        b"stream=true" if stream else b"",
    )
    return status, body


def _gateway_send(user, provider: str, stream: bool, *, store: bool = False) -> tuple[int, dict, bytes]:
    headers = [(b"authorization", f"Bearer {_secret(user)}".encode())]
    if store:
        headers.append((b"x-confab-store", b"true"))
    return _asgi_post(
        "/v1/chat/completions",
        {"model": f"{provider}/{MODELS[provider]}", "messages": [{"role": "user", "content": "Capital of France?"}], "stream": stream},
        headers,
    )


def _whole_and_stream(provider: str, usage) -> tuple[Reply, Reply]:
    """The same answer ("Paris.") whole and streamed, with this usage object as the provider sends it."""
    if provider == "openai":
        return Reply(body=openai_completion("Paris.", usage)), Reply(events=openai_stream(["Par", "is."], usage))
    if provider == "anthropic":
        return Reply(body=anthropic_message("Paris.", usage)), Reply(events=anthropic_stream(["Par", "is."], usage, usage))
    return Reply(body=gemini_response("Paris.", usage)), Reply(events=gemini_stream(["Par", "is."], [usage, usage]))


# --- 1. Usage the provider reports that no ledger row can hold ------------------------------------

# Each is one a compatible server (vLLM, llama.cpp, a proxy at the user's base URL) can send, or a
# sum the real API sends: a float count, a negative one, one over the ledger's integer columns, cache
# or reasoning parts larger than the whole they are part of.
ODD_USAGE = {
    ("openai", "negative"): {"prompt_tokens": -12, "completion_tokens": -2, "total_tokens": -14},
    ("openai", "over int4"): {"prompt_tokens": 3_000_000_000, "completion_tokens": 2, "total_tokens": 3_000_000_002},
    ("openai", "sum over int4"): {"prompt_tokens": 2_000_000_000, "completion_tokens": 2_000_000_000, "total_tokens": 4_000_000_000},
    ("openai", "cached over prompt"): {"prompt_tokens": 12, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 40}},
    ("openai", "reasoning over completion"): {
        "prompt_tokens": 12,
        "completion_tokens": 2,
        "completion_tokens_details": {"reasoning_tokens": 40},
    },
    ("anthropic", "float"): {"input_tokens": 12.0, "output_tokens": 2.0},
    ("anthropic", "negative"): {"input_tokens": -12, "output_tokens": -2},
    ("anthropic", "1h writes over all writes"): {
        "input_tokens": 12,
        "output_tokens": 2,
        "cache_creation_input_tokens": 5,
        "cache_creation": {"ephemeral_1h_input_tokens": 40},
    },
    ("gemini", "negative"): {"promptTokenCount": -12, "candidatesTokenCount": -2},
    ("gemini", "cached over prompt"): {"promptTokenCount": 12, "candidatesTokenCount": 2, "cachedContentTokenCount": 40},
    ("gemini", "over int4"): {"promptTokenCount": 3_000_000_000, "candidatesTokenCount": 2},
}


@pytest.mark.parametrize(
    ("provider", "case", "mode"),
    # Anthropic's stream events are validated by the SDK, which turns 12.0 into 12: that one holds.
    [(p, c, m) for (p, c) in ODD_USAGE for m in ("whole", "stream") if (p, c, m) != ("anthropic", "float", "stream")],
)
def test_a_usage_no_ledger_row_can_hold_still_stores_the_reply_and_meters_it_once(wired, server, provider, case, mode):
    """Today: a float reaches `tokens * Decimal` (TypeError: a 500 for a whole reply; a stream dies
    before its `done` event); the rest reach the ledger's checks (UsageInvalid, a 400 blaming the
    user's request) or PostgreSQL's integer range (DataError). Either way the answer the provider
    gave is dropped, the reply stays `streaming` with its reservation held until the stale pass
    meters a guess 15 minutes later."""
    whole, streamed = _whole_and_stream(provider, ODD_USAGE[provider, case])
    server.queue(whole if mode == "whole" else streamed)
    try:
        message, events = _send(wired, provider, mode)
    except Exception as exc:  # what the view would turn into a 4xx or a 500
        pytest.fail(f"the send raised {type(exc).__name__}: {exc}")
    assert message.content == "Paris." and message.status == "complete", (message.status, message.error)
    assert message.input_tokens >= 0 and message.output_tokens >= 0
    _metered_once(wired)
    if events is not None:
        assert events[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("provider", "case", "stream"), [("anthropic", "float", False), ("openai", "sum over int4", False), ("openai", "sum over int4", True)]
)
def test_an_odd_usage_is_not_a_500_from_the_chat_api(wired, server, provider, case, stream):
    """Through the API: Anthropic's whole reply with `"input_tokens": 12.0` (the SDK does not
    validate a whole reply: the float reaches the pricing, TypeError), and OpenAI's counts each
    within an integer but whose total is not (the ledger's total_tokens column: DataError)."""
    whole, streamed = _whole_and_stream(provider, ODD_USAGE[provider, case])
    server.queue(streamed if stream else whole)
    status, body = _api_send(wired, provider, stream)
    assert status == (200 if stream else 201), (status, body[:300])
    if stream:
        assert b'"type": "done"' in body, body[-300:]
    _metered_once(wired)


@pytest.mark.parametrize("stream", [False, True])
def test_a_negative_usage_is_not_blamed_on_the_gateways_caller(wired, server, stream):
    """Through the gateway a provider's negative counts come back as a 400 `invalid` "Usage not
    recorded: input_tokens must be a whole number from 0 to 2147483647" (the caller's request was
    fine), and the stream as a broken body with no [DONE]."""
    whole, streamed = _whole_and_stream("openai", {"prompt_tokens": -12, "completion_tokens": -2, "total_tokens": -14})
    server.queue(streamed if stream else whole)
    status, _headers, body = _gateway_send(wired, "openai", stream)
    assert status == 200, (status, body[:300])
    assert b"Usage not recorded" not in body
    if stream:
        assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]
    _metered_once(wired)


# --- 2. Usage missing or null: estimated, never free ----------------------------------------------

NO_COUNTS = {
    ("openai", "null fields"): {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    ("openai", "empty object"): {},
    ("anthropic", "null fields"): {"input_tokens": None, "output_tokens": None},
}


@pytest.mark.parametrize("mode", ["whole", "stream"])
@pytest.mark.parametrize(("provider", "case"), list(NO_COUNTS))
def test_a_usage_object_without_counts_is_estimated_not_metered_free(wired, server, provider, case, mode):
    """`usage: {}` or all-null counts: `raw.get(...) or 0` makes every class 0 and the usage is not
    flagged estimated: the call is metered as free and exact. A server that sends no usage object
    at all is estimated (test_providers); one that sends an empty one must be too."""
    whole, streamed = _whole_and_stream(provider, NO_COUNTS[provider, case])
    server.queue(whole if mode == "whole" else streamed)
    message, _events = _send(wired, provider, mode)
    assert message.content == "Paris."
    assert message.input_tokens > 0 and message.output_tokens > 0, (message.input_tokens, message.output_tokens)
    assert message.metadata["estimated"] is True
    _metered_once(wired)


# --- 3. Text the database cannot store ------------------------------------------------------------


def _text_reply(provider: str, parts: list[str], mode: str) -> Reply:
    if provider == "openai":
        return (
            Reply(body=openai_completion("".join(parts), OK_OPENAI)) if mode == "whole" else Reply(events=openai_stream(parts, OK_OPENAI))
        )
    if provider == "anthropic":
        usage = {"input_tokens": 10, "output_tokens": 5}
        if mode == "whole":
            return Reply(body=anthropic_message("".join(parts), usage))
        return Reply(events=anthropic_stream(parts, {"input_tokens": 10, "output_tokens": 1}, usage))
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5}
    if mode == "whole":
        return Reply(body=gemini_response("".join(parts), usage))
    return Reply(events=gemini_stream(parts, [usage] * len(parts)))


@pytest.mark.parametrize("mode", ["whole", "stream"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("odd", ["\u0000", "\ud800"], ids=["NUL", "lone surrogate"])
def test_a_reply_with_a_nul_or_a_lone_surrogate_is_stored_and_metered(wired, server, provider, mode, odd):
    """JSON may carry "\\u0000" and "\\ud800"; a model asked for binary or cut mid-pair sends them.
    PostgreSQL text holds neither (DataError / UnicodeEncodeError when the reply is stored): the
    whole reply is a 500 and the stream ends without its `done` event, the reply left `streaming`.
    The gateway refuses both in a caller's messages (chat/gateway.py CONTROL), never in a reply."""
    server.queue(_text_reply(provider, ["Par", f"is{odd}."], mode))
    try:
        message, events = _send(wired, provider, mode)
    except Exception as exc:
        pytest.fail(f"the send raised {type(exc).__name__}: {exc}")
    assert message.status == "complete" and message.content.startswith("Paris"), (message.status, message.content)
    if events is not None:
        assert events[-1]["type"] == "done"
    _metered_once(wired)


@pytest.mark.parametrize("stream", [False, True])
def test_a_nul_in_a_reply_is_not_a_500_from_the_gateway_when_stored(wired, server, stream):
    """Unstored (the default) the text is never written and the call holds; with X-Confab-Store it is."""
    server.queue(_text_reply("openai", ["Par", "is\u0000."], "stream" if stream else "whole"))
    status, _headers, body = _gateway_send(wired, "openai", stream, store=True)
    assert status == 200, (status, body[:300])
    if stream:
        assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]
    _metered_once(wired)


class _Raw(str):
    """An SSE event sent as these exact bytes (the local server encodes each event it sends)."""

    def __new__(cls, raw: bytes):
        event = str.__new__(cls, raw.decode("latin-1"))
        event.raw = raw
        return event

    def encode(self, *args, **kwargs) -> bytes:
        return self.raw


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_invalid_utf8_byte_in_a_stream_does_not_drop_the_rest_of_the_reply(wired, server, provider, caplog):
    """One byte that is not UTF-8 (a server that cut a character between two tokens: llama.cpp did)
    raises UnicodeDecodeError out of the SDK's SSE decoder: not a provider error, so the send logs
    it as an unexpected crash, shows "unavailable", drops the rest of the reply and its usage chunk,
    and meters an estimate. Gemini's SDK decodes with replacement characters and goes on."""
    if provider == "openai":
        events = openai_stream(["caf@", " au lait"], OK_OPENAI)
    else:
        events = anthropic_stream(["caf@", " au lait"], {"input_tokens": 10, "output_tokens": 1}, {"input_tokens": 10, "output_tokens": 5})
    server.queue(Reply(events=[_Raw(e.encode().replace(b"caf@", b"caf\xff")) for e in events]))
    caplog.set_level(logging.ERROR)
    message, events = _send(wired, provider, "stream")
    assert message.status == "complete" and message.content.endswith(" au lait"), (message.status, message.error, message.content)
    assert not message.metadata["estimated"]  # the usage chunk came, after the odd byte
    assert [r.getMessage() for r in caplog.records if "unexpectedly" in r.getMessage()] == []
    _metered_once(wired)


# --- 4. An HTTP 200 whose body is an error ---------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("openai", openai_error(500, "The server had an error while processing your request.", "server_error")),
        ("gemini", gemini_error(500, "INTERNAL", "An internal error has occurred.")),
    ],
)
def test_a_200_with_an_error_body_is_a_failed_call_not_an_empty_complete_reply(wired, server, provider, body):
    """Proxies and compatible servers answer `200 {"error": ...}`. The whole-reply adapters read it
    as a reply with no text: the message is `complete` with empty content and no error, the ledger
    row a success, billed an estimated prompt; the gateway answers it as a 200 completion."""
    server.queue(Reply(body=body))
    message, _events = _send(wired, provider, "whole")
    assert message.status == "failed" and message.error, (message.status, message.content, message.error)
    [row] = _rows(message)
    assert not row.success
    _metered_once(wired)


# --- 5. A usage Anthropic's shape says is there, missing -------------------------------------------


def test_an_anthropic_reply_without_usage_keeps_its_text_and_is_estimated(wired, server, caplog):
    """A whole Anthropic-compatible reply with no `usage`: `message.usage.model_dump` raises
    AttributeError; the send treats it as an unexpected crash, drops "Paris.", stores a failed
    reply and meters it as 0 tokens (free)."""
    body = anthropic_message("Paris.", {})
    del body["usage"]
    server.queue(Reply(body=body))
    caplog.set_level(logging.ERROR)
    message, _events = _send(wired, "anthropic", "whole")
    assert (message.status, message.content) == ("complete", "Paris."), (message.status, message.error)
    assert message.input_tokens > 0 and message.output_tokens > 0 and message.metadata["estimated"] is True
    _metered_once(wired)


def test_an_anthropic_stream_whose_message_delta_has_no_usage_is_complete_with_its_start_counts(wired, server):
    """message_delta without `usage` (some relays send only the stop reason): AttributeError after
    the whole reply arrived. The reply is stored `interrupted` with "unavailable", and the exact
    input message_start reported is thrown away for an estimate."""
    events = anthropic_stream(["Par", "is."], {"input_tokens": 1000, "output_tokens": 1}, {"output_tokens": 5})
    events[-2] = sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}, "message_delta")
    server.queue(Reply(events=events))
    message, _events = _send(wired, "anthropic", "stream")
    assert (message.status, message.error, message.content) == ("complete", "", "Paris.")
    assert message.input_tokens == 1000  # message_start's count, exact
    _metered_once(wired)


# --- 6. Usage reported in several events ----------------------------------------------------------


def test_an_anthropic_message_delta_reporting_zero_input_does_not_erase_message_starts_counts(wired, server):
    """Counts are cumulative: they never go down. Relays (envoyproxy/ai-gateway#1631 names it) send
    `input_tokens: 0` in message_delta; "latest value wins" then meters the input and the cache reads
    message_start reported as 0."""
    start = {"input_tokens": 1000, "cache_read_input_tokens": 4000, "output_tokens": 1}
    server.queue(
        Reply(events=anthropic_stream(["Par", "is."], start, {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 5}))
    )
    message, _events = _send(wired, "anthropic", "stream")
    assert message.metadata["usage"]["input_uncached"] == 1000 and message.metadata["usage"]["cache_read"] == 4000
    assert message.input_tokens == 5000 and message.output_tokens == 5
    _metered_once(wired)


def test_a_gemini_closing_usage_without_a_prompt_count_does_not_meter_the_reply_as_no_output(wired, server):
    """The closing chunk's usageMetadata carries candidatesTokenCount (5) but no promptTokenCount:
    the adapter discards the whole object (no prompt count: not "reported") and, the text being
    counted, estimates no output at all: a reply with text metered as 0 output tokens."""
    usages = [{"promptTokenCount": 1000, "candidatesTokenCount": 1}, {"candidatesTokenCount": 5}]
    server.queue(Reply(events=gemini_stream(["Hello ", "world"], usages)))
    message, _events = _send(wired, "gemini", "stream")
    assert message.content == "Hello world"
    assert message.output_tokens >= 5, message.metadata["usage"]
    _metered_once(wired)


# --- 7. Errors: what the user is told -------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "reply"),
    [
        # What Anthropic's API answers when the prompt fits but prompt + max_tokens does not.
        (
            "anthropic",
            Reply(
                status=400,
                body=anthropic_error(
                    "invalid_request_error",
                    "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000, "
                    "decrease input length or `max_tokens` and try again",
                ),
            ),
        ),
        # OpenAI's 429 for a single request above the tokens-per-minute limit: waiting never helps.
        (
            "openai",
            Reply(
                status=429,
                body=openai_error(
                    429,
                    "Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 30000, Requested 50000. "
                    "The input or output tokens must be reduced in order to run successfully.",
                    "tokens",
                    "rate_limit_exceeded",
                ),
            ),
        ),
    ],
    ids=["anthropic exceed context limit", "openai request too large"],
)
def test_a_prompt_too_long_for_the_model_says_so(wired, server, provider, reply):
    server.queue(reply)
    message, _events = _send(wired, provider, "whole")
    assert message.error == SENTENCES["context_too_long"], message.error
    _metered_once(wired)


@pytest.mark.parametrize(
    ("provider", "event", "kind"),
    [
        (
            "openai",
            sse(
                {
                    "error": {
                        "message": "This model's maximum context length is 8192 tokens.",
                        "type": "invalid_request_error",
                        "code": "context_length_exceeded",
                    }
                }
            ),
            "context_too_long",
        ),
        ("anthropic", sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"), "unavailable"),
    ],
)
def test_an_error_event_before_any_answer_is_the_errors_kind_and_meters_no_guess(wired, server, provider, event, kind):
    """A stream whose first event is an error (OpenRouter and vLLM send a prompt too long this way;
    Anthropic an overload): the adapter calls it a dropped connection ("the part that arrived is
    kept", nothing arrived) and meters an estimate of the whole prompt the provider never billed.
    Gemini's adapter gets this right (the error's own kind, nothing metered)."""
    server.queue(Reply(events=[event]))
    message, events = _send(wired, provider, "stream")
    assert message.error == SENTENCES[kind], message.error
    assert (message.input_tokens, message.output_tokens) == (0, 0)
    _metered_once(wired)


@pytest.mark.parametrize(
    ("provider", "headers"),
    [
        ("openai", {"retry-after-ms": "-5000"}),
        ("openai", {"retry-after": "inf"}),
        ("openai", {"retry-after": "nan"}),
        ("openai", {"retry-after": "1e300"}),
        ("gemini", {"retry-after-ms": "nan"}),
    ],
    ids=["negative ms", "inf", "nan", "1e300", "gemini nan ms"],
)
def test_a_hostile_retry_after_still_reads_as_a_rate_limit_with_a_sane_wait(wired, server, provider, headers, caplog):
    """retry_after_from_headers clamps `retry-after` at 0 but not `retry-after-ms` (-5 s), and lets
    inf, nan and 1e300 through: ProviderError's math.ceil raises OverflowError / ValueError (an
    "unexpected" crash, logged, told as "unavailable"), or the user reads "Please try again in
    -5 seconds." or a 301-digit number of seconds."""
    if provider == "openai":
        server.queue(Reply(status=429, body=openai_error(429, "Rate limit reached.", "requests", "rate_limit_exceeded"), headers=headers))
    else:
        server.queue(Reply(status=429, body=gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded."), headers=headers))
    caplog.set_level(logging.ERROR)
    message, _events = _send(wired, provider, "whole")
    assert message.error.startswith("The AI provider is receiving too many requests right now."), message.error
    assert "-" not in message.error and len(message.error) < 150, message.error
    assert [r.getMessage() for r in caplog.records if "unexpectedly" in r.getMessage()] == []
    _metered_once(wired)


# --- 8. Content after the final event -------------------------------------------------------------


def test_text_after_anthropics_message_stop_is_not_part_of_the_reply(wired, server):
    """message_stop ends the message; the adapter reads on and appends any text_delta that follows
    (unmetered: the usage came before it). OpenAI's SDK stops at [DONE]."""
    events = anthropic_stream(["Par", "is."], {"input_tokens": 10, "output_tokens": 1}, {"input_tokens": 10, "output_tokens": 5})
    events.append(
        sse({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " INJECTED"}}, "content_block_delta")
    )
    server.queue(Reply(events=events))
    message, _events = _send(wired, "anthropic", "stream")
    assert message.content == "Paris."
    _metered_once(wired)


# --- 9. A provider slow to send its first byte ----------------------------------------------------


def test_a_whole_reply_that_times_out_after_the_request_was_sent_is_metered_not_free(wired, server, monkeypatch):
    """A non-streamed call to a slow model (a reasoning model thinking past the read timeout) times
    out before any byte: the provider got the prompt and bills it, but the call is metered 0 tokens
    at $0 (a timeout carries no usage, and _failure meters nothing without text). A stream that
    stalls after its headers is metered its prompt (estimated); one that stalls before is free.
    A user on a managed key can repeat it: the platform pays, the user's budget never moves."""
    from chat.providers import ChatRequest

    monkeypatch.setattr(services, "ChatRequest", lambda **fields: ChatRequest(**fields, timeout=0.5))
    server.queue(Reply(hang=True))
    message, _events = _send(wired, "openai", "whole", content="Think about this for a long while, then answer.")
    assert message.error == SENTENCES["timeout"]
    assert message.input_tokens > 0 and message.metadata["estimated"] is True, (message.input_tokens, message.metadata)
    _metered_once(wired)


# --- 10. What a provider sends that goes into the reply's metadata (jsonb) ---------------------------


def _finish_chunk(reason: str) -> str:
    return sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
        }
    )


@pytest.mark.parametrize("case", ["usage field with a NUL", "usage field out of float range", "finish reason with a NUL"])
def test_odd_values_the_reply_metadata_keeps_raw_do_not_break_the_send(wired, server, case):
    """The provider's usage object is kept whole in metadata["usage_raw"], and its finish reason in
    metadata["finish_reason"]: jsonb refuses "\\u0000" ("unsupported Unicode escape sequence") and
    Python's json writes a number beyond a double (1e400 parses as inf) as `Infinity`, which is not
    JSON ("invalid input syntax for type json"): DataError when the reply is stored. Compatible
    servers add fields of their own to `usage` (OpenRouter's `cost`), which the SDK keeps."""
    if case == "finish reason with a NUL":
        events = openai_stream(["Par", "is."], OK_OPENAI)
        events[-3] = _finish_chunk("st\u0000op")
        server.queue(Reply(events=events))
        mode = "stream"
    else:
        extra = {"note": "a\u0000b"} if "NUL" in case else {"cost": 1e400}
        server.queue(Reply(body=openai_completion("Paris.", {**OK_OPENAI, **extra})))
        mode = "whole"
    try:
        message, _events = _send(wired, "openai", mode)
    except Exception as exc:
        pytest.fail(f"the send raised {type(exc).__name__}: {exc}")
    assert (message.status, message.content, message.input_tokens, message.output_tokens) == ("complete", "Paris.", 12, 2)
    _metered_once(wired)


# --- 11. A compressed response -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["whole", "stream"])
def test_a_compressed_provider_response_is_bounded_by_its_decoded_size(wired, server, settings, mode):
    """A server at the user's base URL answers with a small gzip body that inflates past the bound.
    Was: the bound counted the compressed bytes (about 2 KB here), so httpx inflated all of it
    into memory (a 64 MB body could have been 64 GB). Should: the bound counts decoded bytes."""
    settings.CHAT_PROVIDER_RESPONSE_MAX_BYTES = 1024 * 1024
    big = "x" * (4 * 1024 * 1024)
    if mode == "whole":
        server.queue(Reply(body=openai_completion(big, OK_OPENAI), compressed="gzip"))
    else:
        server.queue(Reply(events=openai_stream(["Par", "is. ", big], OK_OPENAI), compressed="gzip"))
    message, _events = _send(wired, "openai", mode)
    assert message.status in ("failed", "interrupted") and big not in message.content
    assert message.content in ("", "Paris. ")
    _metered_once(wired)


def test_a_compressed_event_stream_with_an_invalid_utf8_byte_keeps_its_reply(wired, server):
    """The UTF-8 repair ran on unencoded streams only; decoded first, a compressed one is repaired too."""
    events = openai_stream(["caf@", " au lait"], OK_OPENAI)
    server.queue(Reply(events=[_Raw(e.encode().replace(b"caf@", b"caf\xff")) for e in events], compressed="gzip"))
    message, _events = _send(wired, "openai", "stream")
    assert message.status == "complete" and message.content == "caf\ufffd au lait", (message.status, message.error, message.content)
    assert not message.metadata["estimated"]
    _metered_once(wired)


def test_a_provider_response_in_an_encoding_not_asked_for_fails_the_call(wired, server):
    """Was: an encoding httpx has no decoder for was read as if plain. Should: the call fails."""
    server.queue(Reply(body=openai_completion("Paris.", OK_OPENAI), headers={"content-encoding": "br"}))
    message, _events = _send(wired, "openai", "whole")
    assert message.status == "failed" and message.content == ""
    _metered_once(wired)


# --- What held ------------------------------------------------------------------------------------


def test_held_keepalives_comments_pings_and_empty_deltas_change_nothing(wired, server):
    events = openai_stream(["Par", "", "is."], OK_OPENAI)
    events = [": keep-alive\n\n", events[0], ": OPENROUTER PROCESSING\n\n", *events[1:]]
    server.queue(Reply(events=events))
    message, events = _send(wired, "openai", "stream")
    assert (message.status, message.content, message.input_tokens, message.output_tokens) == ("complete", "Paris.", 12, 2)
    assert not message.metadata["estimated"] and events[-1]["type"] == "done"
    _metered_once(wired)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_held_a_character_split_between_two_chunks_arrives_whole(wired, server, provider):
    events = _text_reply(provider, ["caf\u00e9", "!"], "stream").events
    split = []
    for event in events:
        raw = event.replace("\\u00e9", "\u00e9").encode()
        at = raw.find(b"\xc3")
        split += [_Raw(raw[: at + 1]), _Raw(raw[at + 1 :])] if at >= 0 else [_Raw(raw)]
    server.queue(Reply(events=split))
    message, _events = _send(wired, provider, "stream")
    assert (message.status, message.content) == ("complete", "caf\u00e9!")
    _metered_once(wired)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_held_a_stream_without_its_closing_event_keeps_the_usage_it_got(wired, server, provider):
    events = _text_reply(provider, ["Par", "is."], "stream").events[:-1]  # no [DONE] / message_stop
    server.queue(Reply(events=events))
    message, _events = _send(wired, provider, "stream")
    assert (message.status, message.content) == ("complete", "Paris.") and not message.metadata["estimated"]
    _metered_once(wired)


def test_held_a_single_enormous_chunk_is_cut_at_the_output_cap_stored_and_metered(wired, server):
    """2,000,000 characters in one delta, counted 500,000 tokens, past any reply the request's cap
    allows: the reply is cut where the cap's characters end (chat.services._StreamCap), its
    output estimated from what was kept (the provider's count covers what was thrown away)."""
    big = "x" * 2_000_000
    server.queue(Reply(events=openai_stream([big], {"prompt_tokens": 12, "completion_tokens": 500_000, "total_tokens": 500_012})))
    message, _events = _send(wired, "openai", "stream")
    kept = settings.CHAT_MAX_OUTPUT_TOKENS * services.OUTPUT_CHARS_PER_TOKEN_MAX
    assert message.content == big[:kept] and message.metadata["finish_reason"] == "length" and message.metadata["estimated"]
    assert message.output_tokens == kept // 4
    _metered_once(wired)


def test_held_usage_beyond_the_context_window_but_within_the_columns_is_metered_as_reported(wired, server):
    server.queue(
        Reply(body=openai_completion("Paris.", {"prompt_tokens": 900_000_000, "completion_tokens": 2, "total_tokens": 900_000_002}))
    )
    message, _events = _send(wired, "openai", "whole")
    assert (message.input_tokens, message.output_tokens, message.cost) == (900_000_000, 2, Decimal("135.0000012000"))
    _metered_once(wired)


@pytest.mark.parametrize("phase", ["before the headers", "between chunks"])
def test_held_a_client_gone_while_the_provider_is_silent_is_metered_once(wired, server, phase):
    if phase == "before the headers":
        server.queue(Reply(hang=True))
    else:
        server.queue(Reply(events=openai_stream(["Par", "is."], OK_OPENAI), stall_after=2))
    pending = services.message_prepare(user=wired, content="Capital of France?", provider="openai", model=MODELS["openai"])

    async def run():
        task = asyncio.ensure_future(_drain(pending))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await services.stream_endings_wait()

    async_to_sync(run)()
    message = _stored(pending.message.pk)
    assert message.status == "interrupted" and message.error == services.CLIENT_GONE
    assert message.input_tokens > 0 and message.metadata["estimated"] is True
    _metered_once(wired)


async def _drain(pending):
    async for _event in services.message_stream(pending=pending):
        pass


@pytest.mark.parametrize(
    ("provider", "reply"),
    [
        ("openai", Reply(status=413, events=["<html><body>413 Request Entity Too Large</body></html>"])),
        ("anthropic", Reply(status=502, events=["Bad Gateway"])),
        ("gemini", Reply(status=500, events=["oops"])),
    ],
)
def test_held_a_non_json_error_body_is_a_sentence_and_a_failed_row(wired, server, provider, reply):
    server.queue(reply)
    message, _events = _send(wired, provider, "whole")
    assert message.status == "failed" and message.error in SENTENCES.values()
    [row] = _rows(message)
    assert not row.success and (row.input_tokens, row.output_tokens, row.cost) == (0, 0, Decimal(0))
    _metered_once(wired)


def test_held_cost_arithmetic_tiny_and_many_decimal_prices_add_up_exactly(wired, server):
    from chat.tests.factories import price_add

    with rls.privileged(reason="test: a model priced to six decimals"):
        from chat.models import ModelPrice

        ModelPrice.objects.filter(provider="openai", model="gpt-4o-mini").update(is_active=False)
    price_add(provider="openai", model="gpt-odd", input_price="0.123457", output_price="0.000001", context_window=128_000)
    counts = [(1, 1), (7, 3), (1_234_567, 89), (2_000_000_000, 147_483_647)]
    server.queue(
        *(Reply(body=openai_completion("ok", {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o})) for i, o in counts)
    )
    conversation = services.conversation_create(user=wired)
    costs = []
    for _ in counts:
        reply = services.message_send(user=wired, content="hi", conversation_id=conversation.pk, provider="openai", model="gpt-odd")
        costs.append(reply.message.cost)
    expected = [((i * Decimal("0.123457") + o * Decimal("0.000001")) / 1_000_000).quantize(Decimal("1E-10")) for i, o in counts]
    assert costs == expected  # 1 token: 0.0000001235 (half up from 1.23457e-7); 1 output token at $0.000001/M: 0
    with rls.privileged(reason="test"):
        rows = list(TokenUsage.objects.filter(user_id=wired.pk))
        conversation.refresh_from_db()
    assert sum(r.cost for r in rows) == sum(costs) == conversation.total_cost
    _metered_once(wired)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_held_an_error_event_after_partial_text_keeps_the_part_as_interrupted(wired, server, provider):
    if provider == "openai":
        events = openai_stream(["Hello ", "world"], OK_OPENAI)[:2]
        events.append(sse({"error": {"message": "The server had an error.", "type": "server_error"}}))
    else:
        events = gemini_stream(["Hello ", "world"], [{"promptTokenCount": 10, "candidatesTokenCount": 2}, None])[:1]
        events.append(sse(gemini_error(500, "INTERNAL", "An internal error has occurred.")))
    server.queue(Reply(events=events))
    message, events = _send(wired, provider, "stream")
    assert (message.status, message.content, message.error) == ("interrupted", "Hello ", SENTENCES["interrupted"])
    assert message.output_tokens > 0 and events[-1]["type"] == "done"
    _metered_once(wired)


def test_held_chunks_after_openais_done_are_ignored(wired, server):
    events = openai_stream(["Par", "is."], OK_OPENAI)
    events.append(
        sse(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": " INJECTED"}, "finish_reason": None}],
            }
        )
    )
    server.queue(Reply(events=events))
    message, _events = _send(wired, "openai", "stream")
    assert (message.content, message.output_tokens) == ("Paris.", 2)
    _metered_once(wired)


@pytest.mark.parametrize("stream", [False, True])
def test_held_an_unstored_gateway_call_with_a_nul_in_its_reply_is_answered_and_metered(wired, server, stream):
    server.queue(_text_reply("openai", ["Par", "is\u0000."], "stream" if stream else "whole"))
    status, _headers, body = _gateway_send(wired, "openai", stream)
    assert status == 200, body[:300]
    with rls.privileged(reason="test"):
        assert TokenUsage.objects.filter(user_id=wired.pk).count() == 1


def test_held_a_price_changed_while_the_call_runs_meters_the_price_in_force_at_the_check(wired, server):
    from chat.pricing import model_price_version_add

    server.queue(
        Reply(events=openai_stream(["Par", "is."], {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "total_tokens": 2_000_000}))
    )
    pending = services.message_prepare(user=wired, content="Capital of France?", provider="openai", model=MODELS["openai"])
    with rls.privileged(reason="test: staff raise the price mid-call"):
        model_price_version_add(
            provider="openai",
            model=MODELS["openai"],
            fields={
                "display_name": "GPT-4o mini",
                "context_window": 128_000,
                "input_price": Decimal("100"),
                "output_price": Decimal("100"),
            },
        )

    async def read():
        await _drain(pending)
        await services.stream_endings_wait()

    async_to_sync(read)()
    message = _stored(pending.message.pk)
    assert message.cost == Decimal("0.75")  # 1M × $0.15 + 1M × $0.60, the version in force at the check
    _metered_once(wired)


@pytest.mark.parametrize("mode", ["whole", "stream"])
def test_a_provider_response_larger_than_its_bound_fails_the_call_without_reading_it_all(wired, server, settings, mode):
    """A server at the user's base URL answers with a body past CHAT_PROVIDER_RESPONSE_MAX_BYTES.
    Was: the SDK read all of it into the worker's memory, however large. Should: the read stops
    at the bound and the call fails (or, streamed, keeps what arrived), stored and metered once."""
    settings.CHAT_PROVIDER_RESPONSE_MAX_BYTES = 1024 * 1024
    big = "x" * (2 * 1024 * 1024)
    if mode == "whole":
        server.queue(Reply(body=openai_completion(big, OK_OPENAI)))
    else:
        server.queue(Reply(events=openai_stream(["Par", "is. ", big], OK_OPENAI)))
    message, _events = _send(wired, "openai", mode)
    assert message.status in ("failed", "interrupted") and big not in message.content
    assert message.content in ("", "Paris. ")
    _metered_once(wired)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("mode", ["whole", "stream"])
def test_a_compressed_provider_response_under_its_bound_is_read_whole(wired, server, mode, encoding):
    if mode == "whole":
        server.queue(Reply(body=openai_completion("Paris.", OK_OPENAI), compressed=encoding))
    else:
        server.queue(Reply(events=openai_stream(["Par", "is."], OK_OPENAI), compressed=encoding))
    message, _events = _send(wired, "openai", mode)
    assert (message.status, message.content, message.output_tokens) == ("complete", "Paris.", 2)
    assert server.received[-1].headers["accept-encoding"] == "gzip, deflate"
    _metered_once(wired)
