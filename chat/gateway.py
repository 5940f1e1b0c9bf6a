"""The OpenAI-compatible gateway: `POST /v1/chat/completions` and `GET /v1/models`.

Another door to the one metered path (chat.services): a request's `messages` become a
`SuppliedHistory`, and `message_send` / `message_prepare` + `message_stream` check the plan,
reserve, call the provider and write the ledger row exactly as for a chat message. Only the
shapes are OpenAI's: the `chat.completion` object, `chat.completion.chunk` server-sent events,
the `{"error": {"message", "type", "param", "code"}}` error. Confab API keys only, as Bearer
tokens (`chat:write` to complete, `chat:read` to list models); no session, so no CSRF surface.

The views are sync DRF views, as the chat API's: every middleware in the stack is sync, and
Django runs an async view behind sync middleware in a thread all the same. What must not hold a
worker or a connection is the stream, and its body is an async generator that opens its own
short transactions (chat.services.message_stream).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db import connections, transaction
from django.http import Http404, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiKeyAuthentication
from accounts.models import ApiKey
from chat import selectors, services
from chat.models import Message
from chat.providers import PROVIDERS, ChatMessage
from chat.providers.base import STATUS_CODES
from chat.response_cache import HEADER as CACHE_HEADER
from chat.response_cache import header_choice
from chat.streaming import closes_unstarted
from config.api.negotiation import FirstRendererNegotiation
from config.api.parsers import BoundedJSONParser
from config.api.permissions import HasRequiredScope
from config.db import rls
from config.db.rls import APP_ALIAS
from config.errors import ApplicationError

logger = logging.getLogger("confab.chat.gateway")
STORE_HEADER = "X-Confab-Store"
CONVERSATION_HEADER = "X-Confab-Conversation-Id"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MODEL_NAME = 200
# Unicode's control characters (category Cc), and lone surrogates (JSON "\ud800": no UTF-8 for them, so
# they could be neither stored nor echoed in an answer; a valid pair is one character once parsed).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")  # the same but tab and newlines
# OpenAI's error `type` for each status (the SDKs pick their exception class by status alone).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


# --- Errors --------------------------------------------------------------------------


class GatewayInvalid(ApplicationError):
    """A request OpenAI's API would refuse too: a 400 naming the parameter."""

    code = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message, {"field": param})
        if code:
            self.code = code


class ProviderFailed(ApplicationError):
    """The provider failed the call (it is on the ledger as failed): its sentence, with the status
    of its kind (providers.STATUS_CODES: a prompt too long is the caller's 400, a rate limit a 429
    with the provider's wait; a 502 when the kind is not known). No 502 for what a retry cannot
    fix: the official SDKs retry a 502 at once, and each retry is a metered call."""

    status_code = 502
    code = "provider_error"


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _detail_message(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_detail_message(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_detail_message(item) for item in detail)
    return str(detail)


def exception_handler(exc, context):
    """Every error in OpenAI's shape, with our sentence; nothing a failed request wrote survives it."""
    if connections[APP_ALIAS].in_atomic_block:
        transaction.set_rollback(True, using=APP_ALIAS)
    headers = {}
    if isinstance(exc, ApplicationError):
        status, message, code, param = exc.status_code, exc.message, exc.code, exc.extra.get("field")
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, exceptions.APIException):
        status, message, param = exc.status_code, _detail_message(exc.detail), None
        code = getattr(exc.detail, "code", None) or exc.default_code
        if getattr(exc, "auth_header", None):  # DRF sets it on a 401
            code = "invalid_api_key"
            headers["WWW-Authenticate"] = exc.auth_header
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(int(exc.wait))
    elif isinstance(exc, Http404):
        status, message, code, param = 404, "Not found.", "not_found", None
    elif isinstance(exc, PermissionDenied):
        status, message, code, param = 403, "You do not have permission to do that.", "permission_denied", None
    elif isinstance(exc, TooManyFieldsSent):  # Django refuses the query before the view reads it
        status, message, code = 400, f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} parameters.", "bad_request"
        param = None
    elif isinstance(exc, RequestDataTooBig):  # Django refuses the body before the parser sees it
        status, message, code, param = (
            400,
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
            "too_large",
            None,
        )
    elif isinstance(exc, SuspiciousOperation):
        status, message, code, param = 400, "The request was malformed.", "bad_request", None
    else:
        logger.exception("gateway request failed", exc_info=exc)
        status, message, code, param = 500, "Internal server error; it has been logged.", "server_error", None
    if status == 402:
        headers["x-should-retry"] = "false"  # waiting does not refill a monthly quota
    return Response(openai_error(status, message, code=code, param=param), status=status, headers=headers)


@csrf_exempt  # no session is read here: any method gets the 404
def not_found(request, path: str = ""):
    """Unknown paths under /v1/ answer in OpenAI's shape."""
    return JsonResponse(openai_error(404, f"No endpoint at {request.method} {request.path}.", code="not_found"), status=404)


# --- Parsing a request ---------------------------------------------------------------


def _control_free(text: str, *, keep_newlines: bool) -> bool:
    return not (CONTROL_IN_TEXT if keep_newlines else CONTROL).search(text)


def _text(content, param: str) -> str:
    """A message's content: a string, or a list of text parts (any other part type is refused)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for n, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise GatewayInvalid(f"Only text content parts are supported; {param}[{n}] is of type {kind!r}.", f"{param}[{n}]")
            if not isinstance(part.get("text"), str):
                raise GatewayInvalid(f"{param}[{n}].text must be a string.", f"{param}[{n}].text")
            pieces.append(part["text"])
        text = "".join(pieces)
    else:
        raise GatewayInvalid(f"{param} must be a string or a list of text parts.", param)
    if not _control_free(text, keep_newlines=True):
        raise GatewayInvalid(f"{param} contains control characters or invalid Unicode (a lone surrogate).", param)
    if len(text) > services.MAX_CONTENT:
        raise GatewayInvalid(f"{param} is longer than {services.MAX_CONTENT:,} characters.", param)
    return text


def _messages(raw) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise GatewayInvalid("messages must be a non-empty list.", "messages")
    messages = []
    for n, item in enumerate(raw):
        param = f"messages[{n}]"
        if not isinstance(item, dict):
            raise GatewayInvalid(f"{param} must be an object with a role and content.", param)
        role = item.get("role")
        if not isinstance(role, str):  # a list or object would not even look up (a 500)
            raise GatewayInvalid(f"{param}.role must be one of: {', '.join(ROLES)}.", f"{param}.role")
        if role in ("tool", "function") or item.get("tool_calls") or item.get("function_call"):
            raise GatewayInvalid("Tools (function calling) are not supported by this gateway.", param, "tools_not_supported")
        if role not in ROLES:
            raise GatewayInvalid(f"{param}.role must be one of: {', '.join(ROLES)}.", f"{param}.role")
        messages.append(ChatMessage(ROLES[role], _text(item.get("content"), f"{param}.content")))
    if messages[-1].role != "user":
        raise GatewayInvalid("The last message must be the user's: the gateway answers it.", f"messages[{len(messages) - 1}].role")
    return messages


def _number(body: dict, name: str, *, kind: type, low: float, high: float | None = None):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise GatewayInvalid(f"{name} must be {'an integer' if kind is int else 'a number'}.", name)
    if value < low or (high is not None and value > high):
        raise GatewayInvalid(f"{name} must be between {low} and {high}." if high is not None else f"{name} must be at least {low}.", name)
    return value


def model_route(name) -> tuple[str, str]:
    """(provider, model) for a request's `model`: a catalog model name, or `provider/model`
    where a name is in several providers' catalogs; unknown or unpriced is a 400 with the reason."""
    if not isinstance(name, str) or not name.strip():
        raise GatewayInvalid("model is required: one of the ids GET /v1/models lists.", "model")
    if len(name) > MAX_MODEL_NAME or not _control_free(name, keep_newlines=False):
        raise GatewayInvalid("model must be a model id without control characters (see GET /v1/models).", "model")
    priced = [provider for provider in PROVIDERS if selectors.model_price_current(provider=provider, model=name)]
    if len(priced) == 1:  # a catalog name, listed as it is: first, as a name may hold a "/" ("openai/gpt-4o-mini" at a router)
        return priced[0], name
    provider, _, rest = name.partition("/")
    if provider in PROVIDERS and rest and selectors.model_price_current(provider=provider, model=rest):
        return provider, rest
    if len(priced) > 1:
        choices = " or ".join(f"'{provider}/{name}'" for provider in priced)
        raise GatewayInvalid(f"The model '{name}' is offered by several providers: ask for {choices}.", "model", "model_ambiguous")
    if not priced:
        raise GatewayInvalid(
            f"The model '{name}' does not exist in the catalog or has no price in force, so it cannot be used. "
            "GET /v1/models lists the models you can use.",
            "model",
            "model_not_found",
        )
    return priced[0], name


def _store_choice(value: str | None) -> bool:
    if value is None:
        return False
    choice = {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())
    if choice is None:
        raise GatewayInvalid(f"The {STORE_HEADER} header takes 'true' or 'false'.", STORE_HEADER)
    return choice


# Fields that shape or cut the reply (and so what is billed), which no provider call here
# carries: refused unless given their no-op value, never dropped, so a client asking for a stop
# sequence or JSON is not billed for a reply that ignores it. Sampling hints (top_p, seed, the
# penalties, user) change nothing a client checks, and are ignored.
REFUSED_FIELDS = {
    "stop": (None, [], ""),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
}


def completion_parse(body, headers) -> tuple[dict, bool, bool]:
    """(message_send's keyword arguments, stream, include_usage) for a chat completion request."""
    if not isinstance(body, dict):
        raise GatewayInvalid("The request body must be a JSON object.")
    if body.get("tools") or body.get("functions") or body.get("tool_choice") not in (None, "none"):
        raise GatewayInvalid("Tools (function calling) are not supported by this gateway.", "tools", "tools_not_supported")
    if body.get("n") is not None and (isinstance(body["n"], bool) or body["n"] != 1):  # True == 1 in Python, not in JSON
        raise GatewayInvalid("Only n=1 is supported: one choice per request.", "n")
    for name, no_op in REFUSED_FIELDS.items():
        if body.get(name) not in no_op:
            raise GatewayInvalid(f"{name} is not supported by this gateway.", name, "unsupported_parameter")
    stream = body.get("stream")
    stream = False if stream is None else stream  # 0, "" or [] is no boolean: refused below, not read as false
    if not isinstance(stream, bool):
        raise GatewayInvalid("stream must be true or false.", "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise GatewayInvalid("stream_options is an object, allowed only when stream is true.", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):  # bool("false") is True: a wrong type is refused, as for `stream`
        raise GatewayInvalid("stream_options.include_usage must be true or false.", "stream_options.include_usage")
    provider, model = model_route(body.get("model"))
    messages = _messages(body.get("messages"))
    cap = _number(body, "max_completion_tokens", kind=int, low=1) or _number(body, "max_tokens", kind=int, low=1)
    supplied = services.SuppliedHistory(
        messages=tuple(messages[:-1]),
        temperature=_number(body, "temperature", kind=float, low=0, high=2),
        max_tokens=cap,
        store=_store_choice(headers.get(STORE_HEADER)),
    )
    send = {
        "content": messages[-1].content,
        "provider": provider,
        "model": model,
        "response_cache": header_choice(headers.get(CACHE_HEADER)),
        "supplied": supplied,
    }
    return send, stream, include_usage


# --- Answers -------------------------------------------------------------------------


def _usage(message: Message) -> dict:
    classes = message.metadata.get("usage") or {}
    prompt = sum(classes.get(name, 0) for name in ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h"))
    completion = classes.get("output", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": classes.get("cache_read", 0)},
        "completion_tokens_details": {"reasoning_tokens": classes.get("reasoning", 0)},
    }


# How each provider's reason for ending reads in OpenAI's words; any other reason is a "stop".
FINISH_REASONS = {
    "length": "length",
    "max_tokens": "length",  # Anthropic; Gemini's MAX_TOKENS, lowered
    "content_filter": "content_filter",  # OpenAI, Azure and compatible servers
    "refusal": "content_filter",  # Anthropic
    **dict.fromkeys(("safety", "recitation", "blocklist", "prohibited_content", "spii", "image_safety"), "content_filter"),  # Gemini
}


def _finish_reason(message: Message) -> str:
    """A cut or filtered reply says so: OpenAI's clients tell a whole answer from one by it."""
    return FINISH_REASONS.get((message.metadata.get("finish_reason") or "").lower(), "stop")


def _completion_id(pending_or_message) -> str:
    return f"chatcmpl-{pending_or_message.metadata['request_id']}"


def _answer_headers(conversation_id) -> dict:
    return {CONVERSATION_HEADER: str(conversation_id)} if conversation_id else {}


def _failure_of(message: Message) -> ProviderFailed | None:
    if message.error and message.status != Message.Status.COMPLETE:
        kind = message.metadata.get("error_kind")
        return ProviderFailed(message.error, status_code=STATUS_CODES.get(kind), retry_after=message.metadata.get("retry_after"))
    return None


async def _chunks(pending: services.PendingReply, *, include_usage: bool) -> AsyncIterator[str]:
    """`chat.completion.chunk` events: the role, the deltas, the finish reason, then the usage
    (when asked) and `[DONE]`. A client that goes away leaves message_stream to meter the part."""
    message = pending.message
    head = {"id": _completion_id(message), "object": "chat.completion.chunk", "created": int(time.time()), "model": message.model}
    if include_usage:
        head["usage"] = None

    def event(choices: list, **fields) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **fields})}\n\n"

    def delta(content: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

    yield event(delta({"role": "assistant", "content": ""}))
    async with aclosing(services.message_stream(pending=pending)) as stream:  # as chat.streaming's body
        async for item in stream:
            if item["type"] == "delta":
                yield event(delta({"content": item["text"]}))
    failure = _failure_of(message)
    if failure is not None:
        yield f"data: {json.dumps(openai_error(failure.status_code, failure.message, code=failure.code))}\n\n"
    else:
        yield event(delta({}, _finish_reason(message)))
        if include_usage:
            yield event([], usage=_usage(message))
    yield "data: [DONE]\n\n"


class _GatewayView(APIView):
    authentication_classes = [ApiKeyAuthentication]  # keys only: no session, no CSRF
    content_negotiation_class = FirstRendererNegotiation  # OpenAI's API has no `format`: `?format=xml` was a 500
    permission_classes = [IsAuthenticated, HasRequiredScope]
    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer]

    def get_exception_handler(self):
        return exception_handler


# A completion waits on the provider: its POST keeps no request transaction (each step opens its own).
@rls.own_transactions("POST")
class ChatCompletionsGateway(_GatewayView):
    required_scopes = ApiKey.Scope.CHAT_WRITE.value

    @extend_schema(exclude=True)  # OpenAI's schema (platform.openai.com/docs/api-reference/chat), not ours
    def post(self, request):
        send, stream, include_usage = completion_parse(request.data, request.headers)
        send.update(user=request.user, api_key_id=request.auth.pk)
        if stream:
            pending = services.message_prepare(**send)
            response = StreamingHttpResponse(
                _chunks(pending, include_usage=include_usage),
                content_type="text/event-stream",
                headers=_answer_headers(pending.conversation.pk),
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # proxies pass each chunk on as it comes
            return closes_unstarted(response, pending)
        reply = services.message_send(**send)
        message = reply.message
        failure = _failure_of(message)
        if failure is not None:
            raise failure
        body = {
            "id": _completion_id(message),
            "object": "chat.completion",
            "created": int(message.created_at.timestamp()),
            "model": message.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": message.content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": _finish_reason(message),
                }
            ],
            "usage": _usage(message),
        }
        return Response(body, headers=_answer_headers(reply.conversation.pk))


class ModelsGateway(_GatewayView):
    required_scopes = ApiKey.Scope.CHAT_READ.value

    @extend_schema(exclude=True)  # OpenAI's schema, not ours
    def get(self, request):
        prices = selectors.model_price_list()
        names = [price.model for price in prices]
        data = [
            {
                # A name two providers share is listed as provider/model, as completions then need it.
                "id": price.model if names.count(price.model) == 1 else f"{price.provider}/{price.model}",
                "object": "model",
                "created": int(price.effective_from.timestamp()),
                "owned_by": price.provider,
            }
            for price in prices
        ]
        return Response({"object": "list", "data": data})
