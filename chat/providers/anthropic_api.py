"""Anthropic's Messages API through the `anthropic` SDK.

Usage: `input_tokens` excludes `cache_read_input_tokens` and `cache_creation_input_tokens`,
so the classes add up as they come. `cache_creation.ephemeral_1h_input_tokens` are the
1-hour writes and the rest of `cache_creation_input_tokens` the 5-minute ones (older
responses have no split: all 5-minute). `output_tokens` includes thinking;
`output_tokens_details.thinking_tokens` is the reasoning part.

A stream reports input and cache counts in `message_start` and a cumulative usage in
`message_delta`, which may repeat them: each count is the largest reported, never a sum.
The output count arrives only with `message_delta`; a stream cut before it is metered
with output estimated from the text received (reply and thinking).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic

from .base import (
    TRANSPORT_ERRORS,
    ChatRequest,
    Counted,
    Delta,
    Done,
    ProviderError,
    Usage,
    error_in_body,
    http_client,
    interrupted_usage,
    sdk_error,
)
from .base import counted_number as _number
from .base import counted_object as _object

DEFAULT_MAX_TOKENS = 4096  # the API requires a cap; this one fits every current model
# A dropped stream surfaces as the transport's error (or an `error` event, as an APIError).
STREAM_DROPS = (anthropic.APIError, *TRANSPORT_ERRORS, UnicodeDecodeError)  # the last: the SDK's SSE decoder on a byte that is not UTF-8
# How the API says a prompt (with max_tokens) does not fit the model's context window.
CONTEXT_PHRASES = ("prompt is too long", "exceed context limit")


def usage_from_anthropic(raw: dict) -> Usage:
    """Normalize Anthropic's `usage` (a dict; a stream's fields merged: usage_merged)."""
    cache_write = _number(raw.get("cache_creation_input_tokens"))
    cache_write_1h = _number(_object(raw.get("cache_creation")).get("ephemeral_1h_input_tokens"))
    return Usage(
        input_uncached=_number(raw.get("input_tokens")),
        cache_read=_number(raw.get("cache_read_input_tokens")),
        cache_write_5m=cache_write - cache_write_1h,
        cache_write_1h=cache_write_1h,
        output=_number(raw.get("output_tokens")),
        reasoning=_number(_object(raw.get("output_tokens_details")).get("thinking_tokens")),
        raw=raw,
    )


def usage_merged(so_far: dict, reported) -> dict:
    """A stream's usage so far with an event's `usage` (a model, or None): its counts are
    cumulative, so a count never goes down (relays send `input_tokens: 0` in message_delta);
    anything else, the latest wins."""
    if reported is None:
        return so_far
    merged = dict(so_far)
    for name, value in reported.model_dump(exclude_none=True).items():
        before = merged.get(name)
        counts = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (before, value))
        merged[name] = max(before, value) if counts else value
    return merged


def _client(request: ChatRequest) -> anthropic.AsyncAnthropic:
    # No SDK retries: the chat layer decides, and a retried call would be billed twice.
    return anthropic.AsyncAnthropic(
        api_key=request.api_key or "unused", base_url=request.base_url, timeout=request.timeout, max_retries=0, http_client=http_client()
    )


def _arguments(request: ChatRequest) -> dict:
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    arguments = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
    }
    if system:
        arguments["system"] = system
    if request.temperature is not None:
        arguments["temperature"] = request.temperature
    return arguments


def _error(exc: Exception) -> ProviderError:
    detail = str(getattr(exc, "message", "") or exc).lower()
    too_long = isinstance(exc, anthropic.ContentTooLargeError) or (
        isinstance(exc, anthropic.BadRequestError) and any(phrase in detail for phrase in CONTEXT_PHRASES)
    )
    return sdk_error(exc, anthropic, context_too_long=too_long)


async def complete(request: ChatRequest) -> tuple[str, Usage, str | None]:
    try:
        message = await _client(request).messages.create(**_arguments(request))
    except anthropic.AnthropicError as exc:
        raise _error(exc)
    text = "".join(block.text for block in message.content or () if block.type == "text")
    reported = usage_merged({}, getattr(message, "usage", None))
    finish_reason = getattr(message, "stop_reason", None)
    if "input_tokens" not in reported or "output_tokens" not in reported:  # no usage, or no counts in it
        return text, interrupted_usage(None, request=request, unreported_text=text, output_final=False), finish_reason
    return text, usage_from_anthropic(reported), finish_reason


async def stream(request: ChatRequest) -> AsyncIterator[Delta | Counted | Done]:
    raw: dict = {}
    text = ""
    thinking_chars = 0  # reasoning is never shown, only counted: keeping a count, not the text, keeps each Counted O(1)
    received = started = output_reported = False
    finish_reason = None
    try:
        events = await _client(request).messages.create(**_arguments(request), stream=True)
    except anthropic.AnthropicError as exc:
        raise _error(exc)
    async with events:  # returns the connection to the pool even when the caller stops early
        try:
            async for event in events:
                received = True
                if event.type == "message_start":
                    raw = usage_merged(raw, getattr(event.message, "usage", None))
                    started = "input_tokens" in raw
                    yield Counted(_usage_so_far(raw, started, output_reported, request, text, thinking_chars))
                elif event.type == "message_delta":
                    raw = usage_merged(raw, getattr(event, "usage", None))
                    output_reported = output_reported or getattr(getattr(event, "usage", None), "output_tokens", None) is not None
                    finish_reason = event.delta.stop_reason or finish_reason
                    yield Counted(_usage_so_far(raw, started, output_reported, request, text, thinking_chars))
                elif event.type == "message_stop":
                    break  # the message is over: nothing after it is part of it
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
                    yield Delta(event.delta.text)
                elif event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                    thinking_chars += len(event.delta.thinking)  # only a Counted tells the reader it was made
                    yield Counted(_usage_so_far(raw, started, output_reported, request, text, thinking_chars))
        except STREAM_DROPS as exc:
            if not received and isinstance(exc, anthropic.APIError) and not isinstance(exc, anthropic.APIConnectionError):
                raise _error(exc) from exc  # an error event in place of an answer: nothing was generated
            usage = _usage_so_far(raw, started, output_reported, request, text, thinking_chars)
            raise ProviderError("interrupted", usage=usage, partial_text=text, detail=str(exc))
    if not received:  # a 200 with no event at all (an empty body, or a proxy's JSON error): nothing was answered
        raise error_in_body(None)
    yield Done(_usage_so_far(raw, started, output_reported, request, text, thinking_chars), finish_reason)


def _usage_so_far(raw: dict, started: bool, output_reported: bool, request: ChatRequest, text: str, thinking_chars: int) -> Usage:
    """Exact when message_start and message_delta both came; otherwise the missing part estimated."""
    if started and output_reported:
        return usage_from_anthropic(raw)
    # message_start's output count is a placeholder, not the reply's: only message_delta's counts.
    reported = usage_from_anthropic({**raw, "output_tokens": 0, "output_tokens_details": {}}) if started else None
    return interrupted_usage(reported, request=request, unreported_text=text, unreported_chars=thinking_chars, output_final=False)
