"""Request-side logging: every API request is timed and queued for the API log, and
audit entries learn who is acting. Neither writes to the database."""

import json
import logging
import time
import uuid

from django.conf import settings
from django.utils import timezone

from analytics import audit
from analytics.buffer import buffer_push_soon
from config.http import client_ip

logger = logging.getLogger("confab.analytics.middleware")
UNMATCHED_ROUTE = "(unmatched)"


def _error_message(response) -> str:
    if response.status_code < 400:
        return ""
    data = getattr(response, "data", None)  # a DRF Response, rendered already
    if data is None and not response.streaming and response.get("Content-Type", "").startswith("application/json"):
        try:
            data = json.loads(response.content)
        except ValueError:
            data = None
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return response.reason_phrase


class ApiLogMiddleware:
    """Times every /api/ request and queues one API log row (route pattern, not the raw path),
    sent with the process's others (analytics/buffer.buffer_push_soon).

    First after SecurityMiddleware, so the duration covers the whole request.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = getattr(settings, "API_LOG_PATH_PREFIX", "/api/")

    def __call__(self, request):
        if not request.path.startswith(self.prefix):
            return self.get_response(request)
        started = time.monotonic()
        response = self.get_response(request)
        duration_ms = int((time.monotonic() - started) * 1000)
        try:
            match = request.resolver_match
            auth = getattr(request, "auth", None)  # DRF copies the key to the Django request
            buffer_push_soon(
                "api_log",
                {
                    "request_uuid": str(uuid.uuid4()),
                    "created_at": timezone.now().isoformat(),
                    "user_id": str(user_id) if (user_id := audit.request_user_id(request)) else None,
                    "api_key_id": str(auth.pk) if getattr(auth, "pk", None) else None,
                    "route": (match.route if match and match.route else UNMATCHED_ROUTE),
                    "method": request.method,
                    "status": response.status_code,
                    "duration_ms": duration_ms,
                    "ip": client_ip(request),
                    "user_agent": audit.request_user_agent(request),
                    "error": _error_message(response),
                },
            )
        except Exception:  # the log is not worth failing the request for
            logger.exception("API log entry lost for %s %s", request.method, request.path)
        return response


class AuditContextMiddleware:
    """Audit entries made while serving this request name its user, IP and user agent.

    After RLSContextMiddleware (the session user is known there); DRF's API-key user is
    read when an entry is made, since DRF sets it on the request later.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with audit.request_bound(request):
            return self.get_response(request)
