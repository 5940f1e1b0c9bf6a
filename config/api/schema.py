"""drf-spectacular postprocessing hooks: what the API answers or takes that no view's
`extend_schema` says (found by schemathesis against the running API, 2026-12-03)."""

from config.api.errors import _error_documented
from config.api.negotiation import FirstRendererNegotiation

_CONTROL = r"\x00-\x1f\x7f-\x9f"  # Unicode's Cc


def search_query_pattern(max_length: int) -> str:
    """`q` as chat.selectors.search_query_clean takes it: once stripped of whitespace at its ends,
    1 to max_length characters and no control character. `\\s` is Python's (str.isspace), as the strip's."""
    edge = rf"[^\s{_CONTROL}]"
    return rf"^\s*{edge}(?:[^{_CONTROL}]{{0,{max_length - 2}}}{edge})?\s*$"


def json_only_documented(result, generator, request, public):
    """Every operation that takes a body answers 415 for a body of another media type (JSON
    everywhere, multipart for the import's file): DRF's UnsupportedMediaType, in the API's one
    error shape; and 413 for one larger than the server takes (config/asgi.py, before reading it)."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("requestBody")
            if body and "415" not in operation["responses"]:
                taken = ", ".join(sorted(body.get("content", {})))
                operation["responses"]["415"] = _error_documented(f"The body is not {taken}.")
            if body:
                operation["responses"].setdefault("413", _error_documented("The body is larger than the server takes (see the README)."))
    return result


def not_acceptable_documented(result, generator, request, public):
    """Every operation whose view negotiates its answer answers 406 for an Accept header none of its
    media types meets (all but the views that always answer their one type: FirstRendererNegotiation)."""
    fixed = {
        (path, method.lower())
        for path, _regex, method, callback in generator.endpoints or ()
        if issubclass(getattr(callback.cls, "content_negotiation_class", object), FirstRendererNegotiation)
    }
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method) not in fixed:
                operation["responses"].setdefault("406", _error_documented("No answer of a media type the Accept header takes."))
    return result


def streams_documented(result, generator, request, public):
    """An operation with a `stream` query parameter (POST .../messages) answers `stream=true`
    with 200 and server-sent events (chat/streaming.py), beside its JSON answer."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not any(p.get("in") == "query" and p.get("name") == "stream" for p in operation.get("parameters", [])):
                continue
            answer = operation["responses"].setdefault("200", {"description": ""})
            answer.setdefault("content", {})["text/event-stream"] = {
                "schema": {
                    "type": "string",
                    "description": 'Server-sent events, each a `data:` line of JSON: `{"type": "delta", "text": ...}` '
                    'for each piece of the reply, then one `{"type": "done", "message_id": ..., "conversation_id": ..., '
                    '"status": ..., "error": ..., "input_tokens": ..., "output_tokens": ..., "cost": ..., "cached": ...}`.',
                }
            }
            answer["description"] = answer.get("description") or "With `stream=true`: the reply as server-sent events."
    return result


def search_query_documented(result, generator, request, public):
    """`q` of GET /api/v1/search may not be blank, too long or hold control characters (the
    search's own 400s, worded by chat.selectors.search_query_clean): the schema says so."""
    from chat.selectors import SEARCH_MAX_LENGTH

    operation = result.get("paths", {}).get("/api/v1/search", {}).get("get", {})
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "query" and parameter.get("name") == "q":
            parameter["schema"].update(minLength=1, pattern=search_query_pattern(SEARCH_MAX_LENGTH))
    return result
