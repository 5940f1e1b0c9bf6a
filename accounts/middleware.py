import zoneinfo
from functools import lru_cache

from django.utils import timezone
from django.utils.cache import patch_cache_control

from accounts.services import user_session_touch


class SessionActivityMiddleware:
    """Keeps each signed-in session's last activity current (written at most once a minute)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if getattr(request, "user", None) is not None and request.user.is_authenticated and hasattr(request, "session"):
            user_session_touch(request=request)
        return self.get_response(request)


@lru_cache(maxsize=512)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # a name no longer in the zone database
        return zoneinfo.ZoneInfo("UTC")


class UserTimeZoneMiddleware:
    """A signed-in user's pages (and the forms they post) show and read times in their own time
    zone (their profile's `timezone`): a key expiring on 31 December in New York was listed as
    expiring on 1 January. The API and the gateway keep answering in UTC, whoever asks. Overridden
    for the request only, as its thread serves others next."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(("/api/", "/v1/")):
            return self.get_response(request)
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or user.timezone in ("", "UTC"):
            return self.get_response(request)
        with timezone.override(_zone(user.timezone)):
            return self.get_response(request)


class PrivateResponseMiddleware:
    """A response to a signed-in user (by session or API key) that says nothing of caching is
    `Cache-Control: private, no-store`: `Vary: Cookie` alone lets a shared proxy or CDN keep a
    page of someone's conversations, and the Back button show it after logging out. A view that
    chose its own caching (the share page, static files) keeps it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if not response.has_header("Cache-Control") and user is not None and user.is_authenticated:
            patch_cache_control(response, private=True, no_store=True)
        return response
