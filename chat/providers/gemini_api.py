"""Google's Gemini API through the `google-genai` SDK (`genai.Client(...).aio`).

Usage: `prompt_token_count` includes `cached_content_token_count` (the cache reads);
tool-use prompt tokens bill as input; `thoughts_token_count` bills as output and is not
part of `candidates_token_count`, so output is their sum and reasoning the thoughts.
Gemini has no per-call cache write (explicit caches are created and billed apart).

Every stream chunk repeats the usage as running totals: the last one wins. The JSON omits
a count of zero, so the response's closing usage is final even without `candidates_token_count`
(thinking that used up the output budget). A stream cut
midway keeps the last totals exactly and estimates output only for text that arrived
after the last output count. One call is one HTTP request: the SDK's automatic
continuation and retries are off, so a drop is reported, not silently re-billed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx2
from google import genai
from google.genai import errors, types
from pydantic import ValidationError

from .base import (
    CONNECT_ERRORS,
    TIMEOUT_ERRORS,
    TRANSPORT_ERRORS,
    ChatRequest,
    Counted,
    Delta,
    Done,
    ProviderError,
    Usage,
    address_refused,
    error_in_body,
    http_client,
    interrupted_usage,
    prompt_tokens_estimate,
    retry_after_from_headers,
    ssl_context,
)

# Before the first chunk these mean the request itself failed; any other drop means it was accepted.
REQUEST_FAILURES = (errors.APIError, *TIMEOUT_ERRORS, *CONNECT_ERRORS)
# Built once: the SDK wants a sync client too, though this module never uses it.
_sync_client = httpx2.Client(verify=ssl_context())


def usage_from_gemini(raw: dict) -> Usage:
    """Normalize Gemini's `usage_metadata` (a dict with the SDK's snake_case names)."""
    cached = raw.get("cached_content_token_count") or 0
    thoughts = raw.get("thoughts_token_count") or 0
    return Usage(
        input_uncached=(raw.get("prompt_token_count") or 0) - cached + (raw.get("tool_use_prompt_token_count") or 0),
        cache_read=cached,
        output=(raw.get("candidates_token_count") or 0) + thoughts,
        reasoning=thoughts,
        raw=raw,
    )


def _client(request: ChatRequest, on_response=None) -> genai.client.AsyncClient:
    options = types.HttpOptions(
        base_url=request.base_url,
        timeout=int(request.timeout * 1000),
        # One attempt: the chat layer decides on retries, and a retried call would be billed twice.
        retry_options=types.HttpRetryOptions(attempts=1),
        # The shared clients (with their TLS context) also keep the SDK off aiohttp, were it installed.
        httpx_async_client=http_client(on_response=on_response),
        httpx_client=_sync_client,
        async_client_args={"ssl": ssl_context()},
    )
    return genai.Client(api_key=request.api_key or "unused", http_options=options).aio


def _arguments(request: ChatRequest) -> dict:
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    config = types.GenerateContentConfig(
        system_instruction=system or None,
        max_output_tokens=request.max_tokens,
        temperature=request.temperature,
        automatic_continuation=False,
    )
    contents = [
        {"role": "model" if m.role == "assistant" else "user", "parts": [{"text": m.content}]}
        for m in request.messages
        if m.role != "system"
    ]
    return {"model": request.model, "contents": contents, "config": config}


def _retry_after(exc: errors.APIError) -> float | None:
    seconds = retry_after_from_headers(getattr(exc.response, "headers", None))
    if seconds is not None:
        return seconds
    # The API puts its hint in the error body: {"@type": "...RetryInfo", "retryDelay": "37s"}.
    body = exc.details.get("error", exc.details) if isinstance(exc.details, dict) else {}
    details = body.get("details") if isinstance(body, dict) else None
    for detail in details if isinstance(details, list) else []:
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)s", str(detail.get("retryDelay", ""))) if isinstance(detail, dict) else None
        if match:
            return float(match.group(1))  # ProviderError keeps it only if it is a sane wait
    return None


def _error(exc: Exception) -> ProviderError:
    if isinstance(exc, TIMEOUT_ERRORS):
        return ProviderError("timeout", detail=str(exc))
    if not isinstance(exc, errors.APIError):
        return ProviderError("address_refused" if address_refused(exc) else "unavailable", detail=str(exc))
    detail = exc.message or str(exc)
    lowered = detail.lower()
    if exc.code == 429:
        return ProviderError("rate_limited", retry_after=_retry_after(exc), detail=detail)
    if exc.code in (401, 403) or "api key" in lowered:  # a bad key is a 400 on the Gemini API
        return ProviderError("auth", detail=detail)
    if exc.code == 400 and ("token count" in lowered or "too long" in lowered):
        return ProviderError("context_too_long", detail=detail)
    if 400 <= exc.code < 500:
        return ProviderError("bad_request", detail=detail)
    return ProviderError("unavailable", detail=detail)


def _unparsed(exc: ValidationError) -> str:
    """A reply the SDK could not parse, said by where, never by value: a server at a user's base
    URL may put anything there, the user's key included, and the detail reaches the logs."""
    return "the reply did not parse at " + ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())


def _parts(response: types.GenerateContentResponse) -> tuple[str, str]:
    """(reply text, thought text) of the first candidate."""
    content = response.candidates[0].content if response.candidates else None
    parts = (content.parts if content else None) or []
    reply = "".join(part.text or "" for part in parts if not part.thought)
    return reply, "".join(part.text or "" for part in parts if part.thought)


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    reason = response.candidates[0].finish_reason if response.candidates else None
    return reason.value if reason is not None else None


async def complete(request: ChatRequest) -> tuple[str, Usage, str | None]:
    try:
        response = await _client(request).models.generate_content(**_arguments(request))
    except (errors.APIError, *TRANSPORT_ERRORS) as exc:
        raise _error(exc)
    except ValidationError as exc:
        raise ProviderError("unavailable", detail=_unparsed(exc)) from None
    text, thoughts = _parts(response)
    if not response.candidates and response.usage_metadata is None:  # `200 {"error": ...}`, as proxies answer
        raise error_in_body((response.model_extra or {}).get("error"))
    if response.usage_metadata is None:
        return text, _usage_so_far({}, text + thoughts, request, output_counted=False), _finish_reason(response)
    usage = _usage_so_far(response.usage_metadata.model_dump(exclude_none=True), "", request, output_counted=True)
    return text, usage, _finish_reason(response)


async def stream(request: ChatRequest) -> AsyncIterator[Delta | Counted | Done]:
    raw: dict = {}
    text = unreported = ""
    finish_reason = None
    received = output_counted = False
    responses: list[httpx2.Response] = []

    async def opened(response: httpx2.Response) -> None:
        responses.append(response)

    try:
        async for chunk in await _client(request, opened).models.generate_content_stream(**_arguments(request)):
            received = True
            reply, thoughts = _parts(chunk)
            unreported += thoughts + reply
            finish_reason = _finish_reason(chunk) or finish_reason
            if chunk.usage_metadata is not None:
                raw = chunk.usage_metadata.model_dump(exclude_none=True)
                # This chunk's totals cover its own text; the last chunk's always do (a zero count is omitted).
                output_counted = raw.get("candidates_token_count") is not None or _finish_reason(chunk) is not None
                if output_counted:
                    unreported = ""
            if reply:
                text += reply
                yield Delta(reply)
            if chunk.usage_metadata is not None or thoughts:  # counts (or unshown thinking) the reader must not lose
                yield Counted(_usage_so_far(raw, unreported, request, output_counted=output_counted))
    except (errors.APIError, *TRANSPORT_ERRORS) as exc:
        if not received and isinstance(exc, REQUEST_FAILURES):  # the SDK sends the request on the first iteration
            raise _error(exc)
        usage = _usage_so_far(raw, unreported, request, output_counted=output_counted)
        raise ProviderError("interrupted", usage=usage, partial_text=text, detail=str(exc))
    except ValidationError as exc:
        if not received:
            raise ProviderError("unavailable", detail=_unparsed(exc)) from None
        usage = _usage_so_far(raw, unreported, request, output_counted=output_counted)
        raise ProviderError("interrupted", usage=usage, partial_text=text, detail=_unparsed(exc)) from None
    finally:
        # The SDK's nested generators would keep the response open when the caller stops early.
        for response in responses:
            await response.aclose()
    if not received:  # a 200 with no chunk at all: nothing was answered
        raise error_in_body(None)
    yield Done(_usage_so_far(raw, unreported, request, output_counted=output_counted), finish_reason)


def _usage_so_far(raw: dict, unreported_text: str, request: ChatRequest, *, output_counted: bool) -> Usage:
    """The last totals exactly; missing input or uncounted text estimated and flagged.

    `output_counted`: the last totals counted the output so far (they carry an output
    count, or they closed the response, where Gemini omits a count of zero).
    """
    reported = usage_from_gemini(raw) if raw.get("prompt_token_count") is not None else None
    if reported is not None and output_counted and not unreported_text:
        return reported
    if reported is None and output_counted and raw.get("candidates_token_count") is not None:
        # Output counted, the prompt not: the input alone is estimated (no text goes uncounted).
        counted = usage_from_gemini({**raw, "prompt_token_count": 0, "cached_content_token_count": 0})
        reported = replace(counted, input_uncached=prompt_tokens_estimate(request.messages), estimated=True)
        return interrupted_usage(reported, request=request, unreported_text=unreported_text, output_final=not unreported_text)
    return interrupted_usage(reported, request=request, unreported_text=unreported_text, output_final=False)
