"""The provider interface: requests, stream events, normalized usage and the one error type.

Every adapter module (`echo`, `openai_api`, `anthropic_api`, `gemini_api`) offers two coroutines:

- `stream(request) -> AsyncIterator[Delta | Done]`: text deltas, then exactly one `Done`
  with the call's usage; a failure raises `ProviderError`.
- `complete(request) -> tuple[str, Usage]`: the whole reply through the provider's
  non-streaming API (its usage object differs from the stream's, so both are kept).

Estimates (only for what a provider never reported, always flagged `estimated=True`):
a text's tokens are ceil(characters / 4), summed per message for a prompt
(`prompt_tokens_estimate`). No tokenizer: tiktoken loads its encodings from the network.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import math
import ssl
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from types import ModuleType

import httpcore2
import httpx2
from django.conf import settings

from config.errors import ApplicationError
from config.outbound import AddressRefused, GuardedBackend
from config.text import json_clean

try:
    import httpx
except ImportError:  # installed by the dev tools only
    httpx = None


def _from_both(name: str) -> tuple[type[Exception], ...]:
    return (getattr(httpx2, name), *((getattr(httpx, name),) if httpx else ()))


# As the HTTP library raises them: httpx2 (the SDKs' own) or httpx (google-genai and openai accept it too).
TRANSPORT_ERRORS = _from_both("TransportError")  # a dropped connection, mid-stream
TIMEOUT_ERRORS = _from_both("TimeoutException")
CONNECT_ERRORS = _from_both("ConnectError")
CONNECT_TIMEOUTS = (*_from_both("ConnectTimeout"), *_from_both("PoolTimeout"))


@dataclass(frozen=True)
class Usage:
    """One call's tokens by billing class; `reasoning` is a part of `output`, shown apart."""

    input_uncached: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    reasoning: int = 0
    estimated: bool = False
    raw: dict = field(default_factory=dict, hash=False)

    @property
    def input_total(self) -> int:
        return self.input_uncached + self.cache_read + self.cache_write_5m + self.cache_write_1h

    def classes(self) -> dict[str, int]:
        """The billing classes alone (no flag, no raw object): what a ledger row records."""
        return {
            "input_uncached": self.input_uncached,
            "cache_read": self.cache_read,
            "cache_write_5m": self.cache_write_5m,
            "cache_write_1h": self.cache_write_1h,
            "output": self.output,
            "reasoning": self.reasoning,
        }


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    base_url: str | None = None
    api_key: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Counted:
    """What the call has used so far, the text streamed before it included: as the provider counted
    it where it has (a prompt's count at the start; a reasoning model's thinking, which is never
    streamed as text), estimated where not. A reader that leaves is metered from the last of these,
    with only the text after it estimated: never from an estimate of the visible text alone."""

    usage: Usage


@dataclass(frozen=True)
class Done:
    usage: Usage
    finish_reason: str | None = None  # as the provider names it: "stop", "end_turn", "STOP", "length", ...


SENTENCES = {
    "auth": "The AI provider rejected the API key. Check the provider's key in the settings.",
    "rate_limited": "The AI provider is receiving too many requests right now. Please try again shortly.",
    "timeout": "The AI provider did not answer in time. Please try again.",
    "unavailable": "The AI provider is unavailable right now. Please try again later.",
    "address_refused": "This provider's base URL points to an address Confab may not reach. "
    "Change it in Settings → Provider keys, or ask staff to allow the host.",
    "context_too_long": "This conversation is too long for the model. Start a new conversation or choose a model with a larger context.",
    "bad_request": "The AI provider could not process this request.",
    "interrupted": "The reply was cut off because the connection to the AI provider dropped. The part that arrived is kept.",
}
STATUS_CODES = {
    "auth": 502,
    "rate_limited": 429,
    "timeout": 504,
    "unavailable": 503,
    "address_refused": 502,
    "context_too_long": 400,
    "bad_request": 400,
    "interrupted": 502,
}


class ProviderError(ApplicationError):
    """A provider call failed. `kind` is one of SENTENCES; `message` is its sentence for the user.

    `usage` is what the provider had reported (estimated where it had not) when it had
    started answering: a failed call is metered too. `detail` keeps the provider's own words.
    """

    def __init__(
        self,
        kind: str,
        message: str | None = None,
        usage: Usage | None = None,
        *,
        retry_after: float | None = None,
        partial_text: str = "",
        detail: str = "",
    ):
        if kind not in SENTENCES:
            raise ValueError(f"unknown provider error kind {kind!r}")
        retry_after = wait_sane(retry_after)
        if message is None:
            message = SENTENCES[kind]
            if kind == "rate_limited" and retry_after:
                message = f"The AI provider is receiving too many requests right now. Please try again in {math.ceil(retry_after)} seconds."
        super().__init__(
            message,
            {"kind": kind},  # not `detail`: a provider's words can echo part of our key
            status_code=STATUS_CODES[kind],
            retry_after=math.ceil(retry_after) if retry_after is not None else None,
        )
        self.kind = kind
        self.usage = usage
        self.retry_after_seconds = retry_after
        self.partial_text = partial_text
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" + (f" ({self.detail})" if self.detail else "")


MAX_WAIT_SECONDS = 3600  # a longer hint is not a rate limit's: the sentence then names no wait


def wait_sane(seconds: float | None) -> float | None:
    """A provider's hint of how long to wait, if it is one: a finite number of seconds from 0 to
    MAX_WAIT_SECONDS (a server at a user's base URL may send -5000, inf or 1e300)."""
    if seconds is None or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return None
    return seconds if 0 <= seconds <= MAX_WAIT_SECONDS else None


def text_tokens_estimate(text: str) -> int:
    """ceil(characters / 4): the documented estimate for a text no provider counted."""
    return chars_tokens_estimate(len(text))


def chars_tokens_estimate(characters: int) -> int:
    """The same estimate from a count of characters, for text a stream counts but does not keep."""
    return math.ceil(characters / 4)


def prompt_tokens_estimate(messages: tuple[ChatMessage, ...]) -> int:
    """The prompt's input tokens when the provider never said: ceil(characters / 4) per message."""
    return sum(text_tokens_estimate(message.content) for message in messages)


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    if not headers:
        return None
    try:
        return wait_sane(float(headers.get("retry-after-ms")) / 1000)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return wait_sane(float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return max(email.utils.mktime_tz(parsed) - time.time(), 0.0) if parsed else None


def _caused_by(exc: BaseException | None, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, is one of `kinds`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def address_refused(exc: BaseException) -> bool:
    """The outbound guard refused the connection (config/outbound.py), wherever an SDK wrapped it:
    retrying will not help, and the user can fix it."""
    return _caused_by(exc, (AddressRefused,))


def sdk_error(exc: Exception, sdk: ModuleType, *, out_of_credit: bool = False, context_too_long: bool = False) -> ProviderError:
    """Map an `openai` or `anthropic` SDK error (one generator, the same classes) to a ProviderError.

    The caller says what only its provider's wording tells: an account out of credit
    (waiting will not help, so not a rate limit) and a prompt over the context window.
    """
    detail = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError("timeout", detail=detail)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError("address_refused" if address_refused(exc) else "unavailable", detail=detail)
    if isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
        return ProviderError("auth", detail=detail)
    if context_too_long:  # before the rate limit: OpenAI's "Request too large" is a 429 no wait helps
        return ProviderError("context_too_long", detail=detail)
    if isinstance(exc, sdk.RateLimitError) and not out_of_credit:
        return ProviderError("rate_limited", retry_after=retry_after_from_headers(exc.response.headers), detail=detail)
    if isinstance(exc, sdk.APIStatusError) and 400 <= exc.status_code < 500 and not out_of_credit:
        return ProviderError("bad_request", detail=detail)
    return ProviderError("unavailable", detail=detail)


MAX_COUNT = 2**31 - 1  # the ledger's integer columns, its total included
CACHED_AND_UNCACHED = ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h")


def usage_recordable(usage: Usage, *, request: ChatRequest, text: str) -> Usage:
    """The usage a provider reported, as the ledger can record it: every class a whole number
    from 0 to MAX_COUNT (a count sent as 12.0 is 12), their total too. Anything else (a negative
    count, a float, a cache part larger than the input it is part of, reasoning over the output)
    is not a count: the call is metered as a prompt and `text` never counted, estimated and
    flagged. The provider's object is kept in `raw` either way, as JSON can store it."""
    counts = {}
    for name, value in usage.classes().items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            break
        counts[name] = value
    else:
        total = sum(counts[name] for name in CACHED_AND_UNCACHED) + counts["output"]
        if counts["reasoning"] <= counts["output"] and total <= MAX_COUNT:
            return replace(usage, **counts, raw=json_clean(usage.raw))
    estimate = interrupted_usage(None, request=request, unreported_text=text, output_final=False)
    return replace(estimate, raw=json_clean(usage.raw))


def counted_number(value) -> int | float:
    """A count inside a provider's usage object, 0 when absent; anything but a number is 0.5, which
    usage_recordable refuses as a count: the call is then estimated, never metered as free."""
    if value is None:
        return 0
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0.5


def counted_object(value) -> dict:
    """A part of a provider's usage object that should be an object (details), {} otherwise."""
    return value if isinstance(value, dict) else {}


def error_in_body(error) -> ProviderError:
    """A `200` whose body is an error (`{"error": {...}}`, as proxies and compatible servers
    answer), or has neither an answer nor usage: a failed call, of the kind its code says."""
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    status = code if isinstance(code, int) else None
    detail = str(error.get("message") or "the provider answered with neither a reply nor usage")[:500]
    lowered = detail.lower()
    if code == "context_length_exceeded" or "context length" in lowered:
        return ProviderError("context_too_long", detail=detail)
    if status in (401, 403):
        return ProviderError("auth", detail=detail)
    if status == 429:
        return ProviderError("rate_limited", detail=detail)
    if status is not None and 400 <= status < 500:
        return ProviderError("bad_request", detail=detail)
    return ProviderError("unavailable", detail=detail)


def connect_timeout(exc: BaseException) -> bool:
    """The call timed out before its request reached the provider (nothing to bill), wherever an
    SDK wrapped the transport's error; a timeout after it (waiting for the answer) is billed."""
    return _caused_by(exc, CONNECT_TIMEOUTS)


def interrupted_usage(
    reported: Usage | None, *, request: ChatRequest, unreported_text: str, output_final: bool, unreported_chars: int = 0
) -> Usage:
    """Usage for a stream that dropped: every class the provider reported, exactly; the rest estimated.

    `reported` is None when no input count arrived: the whole prompt is estimated as
    uncached input. Unless the provider's output count was final for what arrived
    (`output_final`), the text received after its last output count (reply and reasoning
    alike) is estimated and added: `unreported_text`, plus `unreported_chars` of text counted
    but not kept (reasoning). Any estimate flags the usage `estimated`.
    """
    usage = reported or Usage(input_uncached=prompt_tokens_estimate(request.messages))
    if not output_final:
        usage = replace(usage, output=usage.output + chars_tokens_estimate(len(unreported_text) + unreported_chars))
    return replace(usage, estimated=usage.estimated or reported is None or not output_final)


_loop_pools: dict[asyncio.AbstractEventLoop, httpx2.AsyncHTTPTransport] = {}
_loop_pools_lock = threading.Lock()  # sync callers run loops in several threads


@cache
def ssl_context() -> ssl.SSLContext:
    """One TLS context per process (httpx's default trust): loading CAs costs ~40 ms, far over a request's budget."""
    return httpx2.create_ssl_context()


class _KeysStayHome(httpx2.AsyncClient):
    """httpx drops Authorization when a redirect leaves the origin (bar http to https); Anthropic's
    and Gemini's keys travel in headers of their own, which it kept: they go too."""

    KEY_HEADERS = ("x-api-key", "x-goog-api-key", "api-key")

    def _redirect_headers(self, request, url, method):
        headers = super()._redirect_headers(request, url, method)
        if url.origin != request.url.origin:
            for name in self.KEY_HEADERS:
                headers.pop(name, None)
        return headers


class _Utf8Repaired(httpx2.AsyncByteStream):
    """A response's bytes with every sequence that is not UTF-8 replaced by U+FFFD, decoded
    incrementally (a character split between two chunks arrives whole)."""

    def __init__(self, stream: httpx2.AsyncByteStream):
        self._stream = stream

    async def __aiter__(self):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in self._stream:
            if text := decoder.decode(chunk):
                yield text.encode()
        if tail := decoder.decode(b"", final=True):
            yield tail.encode()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _SizeBounded(httpx2.AsyncByteStream):
    """A response's bytes, decoded here and refused past `limit` decoded bytes: a server at a
    user's base URL could send a body without end, or a small compressed one that inflates
    a thousandfold, which the SDKs would read into the worker's memory. httpx would decode
    each chunk whole; here no piece inflates past `PIECE` at a time."""

    PIECE = 64 * 1024

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int, encoding: str | None):
        self._stream, self._limit, self._encoding = stream, limit, encoding

    async def __aiter__(self):
        received = 0
        inflater = _Inflater(self._encoding) if self._encoding else None
        async for chunk in self._stream:
            for piece in inflater.pieces(chunk, self.PIECE) if inflater else (chunk,):
                received += len(piece)
                if received > self._limit:
                    raise httpx2.RemoteProtocolError(f"The provider's response is larger than {self._limit:,} bytes.")
                yield piece
        if inflater and (rest := inflater.rest()):
            if received + len(rest) > self._limit:
                raise httpx2.RemoteProtocolError(f"The provider's response is larger than {self._limit:,} bytes.")
            yield rest

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Inflater:
    """gzip or deflate (zlib-wrapped, or raw as some servers send it), inflated in bounded pieces."""

    SEEN_MAX = 64 * 1024  # input kept until the first output, to start over as raw deflate

    def __init__(self, encoding: str):
        self._encoding = encoding
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header
        self._seen: bytes | None = b"" if encoding == "deflate" else None

    def pieces(self, data: bytes, size: int):
        if self._seen is not None:
            self._seen = self._seen + data if len(self._seen) < self.SEEN_MAX else None
        try:
            try:
                piece = self._zlib.decompress(data, size)
            except zlib.error:
                if self._seen is None:
                    raise
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # no zlib header: raw deflate
                piece, self._seen = self._zlib.decompress(self._seen, size), None
            while piece:
                self._seen = None  # it decodes: no starting over now
                yield piece
                piece = self._zlib.decompress(self._zlib.unconsumed_tail, size) if self._zlib.unconsumed_tail else b""
        except zlib.error:
            raise httpx2.RemoteProtocolError(f"The provider's {self._encoding} response could not be decoded.") from None

    def rest(self) -> bytes:
        """What the decoder still holds once the input has ended (a raw deflate stream's last bytes)."""
        try:
            return self._zlib.flush()
        except zlib.error:
            raise httpx2.RemoteProtocolError(f"The provider's {self._encoding} response could not be decoded.") from None


ACCEPT_ENCODING = "gzip, deflate"  # what `_Inflater` reads; httpx would add br or zstd were their decoders installed


async def _size_bounded(response: httpx2.Response) -> None:
    """Decoding moves here from httpx (so it is bounded): the header goes, the bytes arrive decoded."""
    encodings = [value.strip().lower() for value in response.headers.get_list("content-encoding", split_commas=True)]
    encodings = [value for value in encodings if value not in ("", "identity")]  # an empty list element is no encoding (RFC 9110 5.6.1)
    if len(encodings) > 1 or (encodings and encodings[0] not in ("gzip", "deflate")):
        # The client asks for these two only (`ACCEPT_ENCODING`).
        raise httpx2.RemoteProtocolError(f"The provider's response is encoded as {', '.join(encodings)}, which Confab does not read.")
    if encodings:
        del response.headers["content-encoding"]
    response.stream = _SizeBounded(response.stream, settings.CHAT_PROVIDER_RESPONSE_MAX_BYTES, encodings[0] if encodings else None)


async def _event_stream_repaired(response: httpx2.Response) -> None:
    """One byte that is not UTF-8 in a server-sent event stream (a server that cut a character
    between two tokens) makes the openai and anthropic SDKs' decoders raise, losing the rest of
    the reply and its usage; replaced, it is one odd character. Runs after `_size_bounded`, which
    has decoded a compressed stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        response.stream = _Utf8Repaired(response.stream)


def http_client(*, on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None) -> httpx2.AsyncClient:
    """An HTTP client for one call, over the running event loop's shared connection pool.

    An SDK client built with its own HTTP client costs 50-95 ms (TLS setup) and a new
    pool; built on this one, under 0.2 ms. Timeouts are set per request by the SDKs.
    A pool is bound to its loop, so each loop has its own. Never close the client (that
    closes the pool): close its responses, which `on_response` receives as they open.
    """
    loop = asyncio.get_running_loop()
    pool = _loop_pools.get(loop)
    if pool is None:
        with _loop_pools_lock:
            # A finished loop's connections are dead; its pool (which holds the loop) would never be collected.
            for closed in [other for other in _loop_pools if other.is_closed()]:
                del _loop_pools[closed]
            limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)  # as the openai SDK's default: many streams at once
            pool = _loop_pools[loop] = httpx2.AsyncHTTPTransport(verify=ssl_context(), limits=limits)
            # Every provider call connects through the guard: a user's base URL may name any host.
            pool._pool = httpcore2.AsyncConnectionPool(
                ssl_context=ssl_context(),
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                network_backend=GuardedBackend(),
            )
    hooks = [_size_bounded, _event_stream_repaired, *([on_response] if on_response else [])]
    return _KeysStayHome(
        transport=pool, follow_redirects=True, headers={"accept-encoding": ACCEPT_ENCODING}, event_hooks={"response": hooks}
    )
