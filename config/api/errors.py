"""One error format for every API error: {"message": "...", "extra": {...}}."""

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connections, transaction
from django.http import Http404, JsonResponse
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from config.db.rls import APP_ALIAS
from config.errors import ApplicationError


class ErrorOut(serializers.Serializer):
    """Every API error: a sentence, and structured detail (always `code`; `fields` for invalid input)."""

    message = serializers.CharField(help_text="A sentence saying what is wrong.")
    extra = serializers.DictField(help_text="`code`: machine-readable; more detail, e.g. `fields` for invalid input.")


def error_responses(*statuses: int) -> dict:
    """For extend_schema(responses=...): each status answers the one error shape."""
    return {status: ErrorOut for status in statuses}


def _first_message(detail) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            text = _first_message(value)
            return text if key in ("non_field_errors", "detail") else f"{key}: {text}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def exception_handler(exc, context):
    # Nothing a failed request wrote survives it (a view with its own transactions has none open here).
    if connections[APP_ALIAS].in_atomic_block:
        transaction.set_rollback(True, using=APP_ALIAS)
    if isinstance(exc, ApplicationError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response({"message": exc.message, "extra": {"code": exc.code, **exc.extra}}, status=exc.status_code, headers=headers)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a 500: Django's handler500 answers in the same format
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "message": f"Invalid input: {_first_message(response.data)}",
            "extra": {"code": "invalid", "fields": response.data},
        }
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        extra = {"code": getattr(detail, "code", None) or exc.default_code}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            extra["retry_after"] = int(exc.wait)
        response.data = {"message": str(detail), "extra": extra}
    return response


def api_not_found(request, exception=None):
    return JsonResponse({"message": f"No API endpoint at {request.path}.", "extra": {"code": "not_found"}}, status=404)


def api_bad_request(request, exception=None):
    if isinstance(exception, RequestDataTooBig):
        message, code = f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.", "too_large"
    else:
        message, code = "The request was malformed.", "bad_request"
    return JsonResponse({"message": message, "extra": {"code": code}}, status=400)


def api_server_error(request):
    return JsonResponse({"message": "Internal server error; it has been logged.", "extra": {"code": "server_error"}}, status=500)


def paging_documented(result, generator, request, public):
    """drf-spectacular postprocessing hook: every paged list answers 404 for a page past its end
    ("Invalid page.") or a cursor it did not issue, and 400 for a page_size out of its range
    (config/api/pagination.StrictPageSize), so its operation documents both."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            names = {parameter.get("name") for parameter in operation.get("parameters", []) if parameter.get("in") == "query"}
            if names & {"page", "cursor"} and "404" not in operation.get("responses", {}):
                operation["responses"]["404"] = _error_documented("No such page.")
            if "page_size" in names and "400" not in operation.get("responses", {}):
                operation["responses"]["400"] = _error_documented("page_size out of range.")
    return result


def _error_documented(description: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}, "description": description}


def throttled_documented(result, generator, request, public):
    """drf-spectacular postprocessing hook: every operation may answer 429, since the per-key (or
    per-user) API throttle counts every authenticated call (THROTTLE_API_PER_MINUTE); an operation
    that documents its own 429 (a plan's rate limit on a send) keeps its description."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            operation["responses"].setdefault("429", _error_documented("Too many requests: wait the seconds in Retry-After."))
            operation["responses"]["429"].setdefault(
                "headers", {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
            )
    return result
