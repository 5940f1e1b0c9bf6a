"""Views for signed-in users only."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.utils.http import url_has_allowed_host_and_scheme


def _referring_page(request) -> str:
    """The page the request was made from (same site only), else the home page."""
    referer = request.headers.get("Referer", "")
    if referer and url_has_allowed_host_and_scheme(referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        parts = urlsplit(referer)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/"


def login_required(view):
    """Django's login_required, also for a form's action and an htmx request. Signed out, a page
    asked for goes to log in and back to it; a form posted (its session ended while the tab stayed
    open) goes back to the page it was posted from, not to its POST-only action (a 405 once signed
    in); an htmx request is told to load the login page (HX-Redirect), not handed a redirect whose
    login page it would swap into a fragment."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        htmx = request.headers.get("HX-Request") == "true"
        asked_for_a_page = request.method in ("GET", "HEAD") and not htmx
        login = redirect_to_login(request.get_full_path() if asked_for_a_page else _referring_page(request))
        if htmx:
            response = HttpResponse(status=204)
            response["HX-Redirect"] = login.url
            return response
        return login

    return wrapped
