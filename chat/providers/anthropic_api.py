"""Anthropic's Messages API through the `anthropic` SDK.

Usage: `input_tokens` excludes `cache_read_input_tokens` and `cache_creation_input_tokens`,
so the classes add up as they come. `cache_creation.ephemeral_1h_input_tokens` are the
1-hour writes and the rest of `cache_creation_input_tokens` the 5-minute ones (older
responses have no split: all 5-minute). `output_tokens` includes thinking;
`output_tokens_details.thinking_tokens` is the reasoning part.

A stream reports input and cache counts in `message_start` and a cumulative usage in
`message_delta`, which may repeat them: the latest value of each field wins, never a sum.
The output count arrives only with `message_delta`; a stream cut before it is metered
with output estimated from the text received (reply and thinking).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic

from .base import TRANSPORT_ERRORS, ChatRequest, Delta, Done, ProviderError, Usage, http_client, interrupted_usage, sdk_error

DEFAULT_MAX_TOKENS = 4096  # the API requires a cap; this one fits every current model
# A dropped stream surfaces as the transport's error (or an `error` event, as an APIError).
STREAM_DROPS = (anthropic.APIError, *TRANSPORT_ERRORS)


def usage_from_anthropic(raw: dict) -> Usage:
    """Normalize Anthropic's `usage` (a dict; a stream's fields merged, latest value wins)."""
    cache_write = raw.get("cache_creation_input_tokens") or 0
    cache_write_1h = (raw.get("cache_creation") or {}).get("ephemeral_1h_input_tokens") or 0
    return Usage(
        input_uncached=raw.get("input_tokens") or 0,
        cache_read=raw.get("cache_read_input_tokens") or 0,
        cache_write_5m=cache_write - cache_write_1h,
        cache_write_1h=cache_write_1h,
        output=raw.get("output_tokens") or 0,
        reasoning=(raw.get("output_tokens_details") or {}).get("thinking_tokens") or 0,
        raw=raw,
    )


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
        isinstance(exc, anthropic.BadRequestError) and "prompt is too long" in detail
    )
    return sdk_error(exc, anthropic, context_too_long=too_long)


async def complete(request: ChatRequest) -> tuple[str, Usage]:
    try:
        message = await _client(request).messages.create(**_arguments(request))
    except anthropic.AnthropicError as exc:
        raise _error(exc)
    text = "".join(block.text for block in message.content if block.type == "text")
    return text, usage_from_anthropic(message.usage.model_dump(exclude_none=True))


async def stream(request: ChatRequest) -> AsyncIterator[Delta | Done]:
    raw: dict = {}
    text = thinking = ""
    started = output_reported = False
    finish_reason = None
    try:
        events = await _client(request).messages.create(**_arguments(request), stream=True)
    except anthropic.AnthropicError as exc:
        raise _error(exc)
    async with events:  # returns the connection to the pool even when the caller stops early
        try:
            async for event in events:
                if event.type == "message_start":
                    started = True
                    raw.update(event.message.usage.model_dump(exclude_none=True))
                elif event.type == "message_delta":
                    output_reported = True
                    raw.update(event.usage.model_dump(exclude_none=True))
                    finish_reason = event.delta.stop_reason or finish_reason
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text += event.delta.text
                    yield Delta(event.delta.text)
                elif event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                    thinking += event.delta.thinking
        except STREAM_DROPS as exc:
            usage = _usage_so_far(raw, started, output_reported, request, thinking + text)
            raise ProviderError("interrupted", usage=usage, partial_text=text, detail=str(exc))
    yield Done(_usage_so_far(raw, started, output_reported, request, thinking + text), finish_reason)


def _usage_so_far(raw: dict, started: bool, output_reported: bool, request: ChatRequest, received_text: str) -> Usage:
    """Exact when message_start and message_delta both came; otherwise the missing part estimated."""
    if started and output_reported:
        return usage_from_anthropic(raw)
    # message_start's output count is a placeholder, not the reply's: only message_delta's counts.
    reported = usage_from_anthropic({**raw, "output_tokens": 0, "output_tokens_details": {}}) if started else None
    return interrupted_usage(reported, request=request, unreported_text=received_text, output_final=False)
