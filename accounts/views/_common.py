"""Small helpers the account pages share."""

from __future__ import annotations

from django.http import HttpResponse

from config.http import site_url

BACKEND = "accounts.backends.EmailBackend"


def _base_url(request) -> str:
    """https://host (no trailing slash), for links in emails (config.http.site_url)."""
    return site_url(request)


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _htmx_redirect(url: str) -> HttpResponse:
    response = HttpResponse(status=204)
    response["HX-Redirect"] = url
    return response
