"""A request's URL resolved once.

The row-level security middleware must know the view before the handler calls it (does it open
its own transactions?), so it resolves the path; Django's handler then resolved it again (for the
metered send's path, 17 µs in a warm loop, about 0.05 ms in the bench's requests: docs/performance.md).
The match is kept on the request, and the handlers (config/asgi.py, config/wsgi.py) take it instead
of resolving again, as long as the path and the URLconf are those it was resolved for.
"""

from django.urls import Resolver404, get_resolver, set_urlconf

_KEPT = "_confab_resolved"  # (path_info, urlconf, match) on the request


def request_resolve(request):
    """The request's ResolverMatch, resolved as Django's handler resolves it and kept for the
    handler; None when no pattern matches (the handler then answers 404 as usual)."""
    urlconf = getattr(request, "urlconf", None)
    try:
        match = get_resolver(urlconf).resolve(request.path_info)
    except Resolver404:
        return None
    setattr(request, _KEPT, (request.path_info, urlconf, match))
    return match


class ResolveOnceMixin:
    """For a Django handler: the match request_resolve kept, if it still applies."""

    def resolve_request(self, request):
        kept = getattr(request, _KEPT, None)
        urlconf = getattr(request, "urlconf", None)
        if kept is None or kept[0] != request.path_info or kept[1] != urlconf:
            return super().resolve_request(request)
        if urlconf is not None:
            set_urlconf(urlconf)  # as Django's resolve_request does for a request's own URLconf
        request.resolver_match = kept[2]
        return kept[2]
