"""DRF's content negotiation, its answer for the Accept headers nearly every API client sends
worked out once per list of renderers instead of on every request.

DRF parses the Accept header and every renderer's media type and ranks them on each request
(about 0.1 ms of CPU on the metered send). For `*/*` (httpx, curl, most SDKs), `application/json`
or no header at all, and no `?format=`, the answer depends only on the renderers' classes, so it is
computed by DRF once and reused. Anything else is negotiated by DRF as before: no client-chosen
string is kept (the cache's keys are these headers only, times the views' renderer lists).
"""

from __future__ import annotations

from django.http import Http404
from rest_framework.exceptions import NotAcceptable, ParseError
from rest_framework.negotiation import DefaultContentNegotiation

COMMON_ACCEPT = frozenset({"*/*", "application/json"})
_answers: dict[tuple, tuple[int, str]] = {}  # (accept, renderer classes) -> (renderer's index, media type)


class ContentNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        accept = request.META.get("HTTP_ACCEPT", "*/*")  # request.headers would build every header's entry
        if format_suffix or accept not in COMMON_ACCEPT or self.settings.URL_FORMAT_OVERRIDE in request.query_params:
            return self._negotiated(request, renderers, format_suffix)
        key = (accept, tuple(type(renderer) for renderer in renderers))
        answer = _answers.get(key)
        if answer is None:
            renderer, media_type = super().select_renderer(request, renderers, format_suffix)
            answer = _answers[key] = (renderers.index(renderer), media_type)
        index, media_type = answer
        return renderers[index], media_type

    def _negotiated(self, request, renderers, format_suffix):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except Http404:  # DRF's answer to a `?format=` no renderer has: a 404 for an endpoint that exists
            formats = ", ".join(sorted({renderer.format for renderer in renderers}))
            raise ParseError(f"Unknown format: `format` must be one of {formats}.") from None


class FirstRendererNegotiation(ContentNegotiation):
    """The view's first renderer whatever the client asks, for views where `?format=` is not
    DRF's: the OpenAI-compatible gateway (no such parameter, one answer type), a conversation's
    export (`format` names the export's own format, json or md)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


EVENT_STREAM = "text/event-stream"


class EventStreamNegotiation(ContentNegotiation):
    """For a view that may answer with server-sent events (a send with `?stream=true`): a client
    that accepts only `text/event-stream`, as EventSource and its kin send, is not refused before
    the view runs; the stream is the view's own response, and anything else it answers (a refusal,
    a reply without `stream`) is the first renderer's JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            if request.method != "POST" or "stream" not in request.query_params or not _accepts_events(request):
                raise
            return renderers[0], renderers[0].media_type


def _accepts_events(request) -> bool:
    """Whether the Accept header takes text/event-stream (not with q=0)."""
    for element in request.META.get("HTTP_ACCEPT", "").split(","):
        media_type, *parameters = (piece.strip() for piece in element.split(";"))
        if media_type.lower() != EVENT_STREAM:
            continue
        weights = [value for name, _, value in (p.partition("=") for p in parameters) if name.strip().lower() == "q"]
        try:
            return not weights or float(weights[0]) > 0
        except ValueError:
            return False
    return False
