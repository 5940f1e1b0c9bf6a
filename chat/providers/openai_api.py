"""OpenAI and OpenAI-compatible servers (Ollama, vLLM, llama.cpp) through the `openai` SDK.

`request.base_url` points the client at a compatible server; None means OpenAI itself.

Usage (Chat Completions and Responses alike): `prompt_tokens` / `input_tokens` include
`cached_tokens` and `cache_write_tokens` (in the prompt details), so uncached input is what
remains; OpenAI has one cache-write price, recorded as 5-minute writes. `completion_tokens`
/ `output_tokens` include reasoning and rejected prediction tokens: output is the whole
count, reasoning the part shown apart. A stream carries usage only in its last chunk and
only when `stream_options.include_usage` is set, so it always is; if that chunk never
comes, input is estimated from the prompt and output from the text received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai

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

# A dropped stream surfaces as the SDK's connection error (an APIError), an error event, or the bare transport error.
STREAM_DROPS = (openai.APIError, *TRANSPORT_ERRORS, UnicodeDecodeError)  # the SDK's SSE decoder on a byte that is not UTF-8
# How vLLM ("maximum context length") and llama.cpp ("exceeds the available context size") say it.
CONTEXT_PHRASES = ("context length", "context size")


def usage_from_openai(raw: dict) -> Usage | None:
    """Normalize a Chat Completions `usage` or a Responses `usage` object (as a dict); None when it
    has no prompt or no completion count (`{}`, nulls): not reported, so estimated, never free."""
    prompt = raw.get("prompt_tokens", raw.get("input_tokens"))
    completion = raw.get("completion_tokens", raw.get("output_tokens"))
    if not isinstance(prompt, int | float) or not isinstance(completion, int | float):
        return None
    prompt_details = _object(raw.get("prompt_tokens_details") or raw.get("input_tokens_details"))
    completion_details = _object(raw.get("completion_tokens_details") or raw.get("output_tokens_details"))
    cache_read = _number(prompt_details.get("cached_tokens"))
    cache_write = _number(prompt_details.get("cache_write_tokens"))
    return Usage(
        input_uncached=prompt - cache_read - cache_write,
        cache_read=cache_read,
        cache_write_5m=cache_write,
        output=completion,
        reasoning=_number(completion_details.get("reasoning_tokens")),
        raw=raw,
    )


def _client(request: ChatRequest) -> openai.AsyncOpenAI:
    # No SDK retries: the chat layer decides, and a retried call would be billed twice.
    return openai.AsyncOpenAI(
        api_key=request.api_key or "unused", base_url=request.base_url, timeout=request.timeout, max_retries=0, http_client=http_client()
    )


def _arguments(request: ChatRequest) -> dict:
    arguments = {"model": request.model, "messages": [{"role": m.role, "content": m.content} for m in request.messages]}
    if request.max_tokens is not None:
        # OpenAI's reasoning models refuse `max_tokens`; compatible servers know only it.
        arguments["max_tokens" if request.base_url else "max_completion_tokens"] = request.max_tokens
    if request.temperature is not None:
        arguments["temperature"] = request.temperature
    return arguments


def _error(exc: Exception) -> ProviderError:
    code = getattr(exc, "code", None)
    detail = str(getattr(exc, "message", "") or exc).lower()
    too_long = (
        code == "context_length_exceeded"
        or (isinstance(exc, openai.BadRequestError) and any(p in detail for p in CONTEXT_PHRASES))
        # A single request over the tokens-per-minute limit: a 429 that no wait helps.
        or (isinstance(exc, openai.RateLimitError) and "request too large" in detail)
    )
    return sdk_error(exc, openai, out_of_credit=code == "insufficient_quota", context_too_long=too_long)


async def complete(request: ChatRequest) -> tuple[str, Usage, str | None]:
    try:
        response = await _client(request).chat.completions.create(**_arguments(request))
    except openai.OpenAIError as exc:
        raise _error(exc)
    text = (response.choices[0].message.content or "") if response.choices else ""
    if not response.choices and response.usage is None:  # `200 {"error": ...}`, as proxies answer
        raise error_in_body((response.model_extra or {}).get("error"))
    usage = usage_from_openai(response.usage.model_dump(exclude_none=True)) if response.usage is not None else None
    finish_reason = response.choices[0].finish_reason if response.choices else None
    return text, usage or interrupted_usage(None, request=request, unreported_text=text, output_final=False), finish_reason


async def stream(request: ChatRequest) -> AsyncIterator[Delta | Counted | Done]:
    # `unreported`: the text after the last usage chunk (all of it until one comes), which no count covers.
    text = unreported = ""
    usage, finish_reason = None, None
    try:
        chunks = await _client(request).chat.completions.create(**_arguments(request), stream=True, stream_options={"include_usage": True})
    except openai.OpenAIError as exc:
        raise _error(exc)
    received = False
    async with chunks:  # returns the connection to the pool even when the caller stops early
        try:
            async for chunk in chunks:
                received = True
                for choice in chunk.choices:
                    finish_reason = choice.finish_reason or finish_reason
                    if choice.delta and choice.delta.content:
                        text += choice.delta.content
                        unreported += choice.delta.content
                        yield Delta(choice.delta.content)
                if chunk.usage is not None:
                    # Usually last; some servers send running totals on every chunk (each covering its own text).
                    usage = usage_from_openai(chunk.usage.model_dump(exclude_none=True)) or usage
                    if usage is not None:
                        unreported = ""
                        yield Counted(usage)
        except STREAM_DROPS as exc:
            if not received and isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
                raise _error(exc) from exc  # an error event in place of an answer: nothing was generated
            estimate = interrupted_usage(usage, request=request, unreported_text=unreported, output_final=not unreported)
            raise ProviderError("interrupted", usage=estimate, partial_text=text, detail=str(exc))
    if not received:  # a 200 with no chunk (only [DONE], an empty body, or a proxy's JSON error): nothing was answered
        raise error_in_body(None)
    # Text after the usage chunk, or a server that ignores include_usage: metered, the uncounted part estimated.
    yield Done(
        usage if not unreported else interrupted_usage(usage, request=request, unreported_text=unreported, output_final=False),
        finish_reason,
    )
