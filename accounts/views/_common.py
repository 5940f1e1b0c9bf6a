"""Small helpers the account pages share."""

from __future__ import annotations

from django.http import HttpResponse

BACKEND = "accounts.backends.EmailBackend"


def _base_url(request) -> str:
    """https://host (no trailing slash), for links in emails."""
    return request.build_absolute_uri("/")[:-1]


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _htmx_redirect(url: str) -> HttpResponse:
    response = HttpResponse(status=204)
    response["HX-Redirect"] = url
    return response
