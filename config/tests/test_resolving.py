"""config/resolving.py: the URL the row-level security middleware resolved is not resolved again
by the handler (ASGI and WSGI), and a match kept for another path or URLconf is not reused."""

import uuid
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.test import RequestFactory
from django.urls import URLResolver, get_resolver

from config.asgi import OneHopASGIHandler
from config.resolving import request_resolve
from config.tests.asgi_scope import http_scope
from config.wsgi import ResolveOnceWSGIHandler

pytestmark = pytest.mark.django_db(transaction=True)  # the request runs on another thread's connection

# A view marked as opening its own transactions (chat.api.MessageListApi), so the middleware resolves
# its path; without a key DRF answers 401 before the view reads anything.
MESSAGES = f"/api/v1/conversations/{uuid.uuid4()}/messages"


def _root_resolutions(serve) -> tuple[object, int]:
    """(what serve() answered, how many times the root URLconf was resolved meanwhile)."""
    root, resolve, calls = get_resolver(), URLResolver.resolve, []

    def counted(self, path):
        if self is root:
            calls.append(path)
        return resolve(self, path)

    with mock.patch.object(URLResolver, "resolve", counted):
        answer = serve()
    return answer, len(calls)


def _asgi_post(application) -> int:
    async def post():
        communicator = ApplicationCommunicator(application, http_scope("POST", MESSAGES, [(b"content-type", b"application/json")]))
        await communicator.send_input({"type": "http.request", "body": b"{}"})
        start = await communicator.receive_output(5)
        await communicator.receive_output(5)
        await communicator.wait(5)
        return start["status"]

    return async_to_sync(post)()


def test_the_asgi_handler_resolves_a_path_the_middleware_resolved_once():
    status, resolutions = _root_resolutions(lambda: _asgi_post(OneHopASGIHandler()))
    assert status == 401
    assert resolutions == 1


def test_djangos_own_handler_resolves_it_twice():
    """The baseline: the same request through Django's handler (the count above is not blind)."""
    status, resolutions = _root_resolutions(lambda: _asgi_post(ASGIHandler()))
    assert status == 401
    assert resolutions == 2


def test_the_wsgi_handler_resolves_it_once():
    environ = RequestFactory().post(MESSAGES, data=b"{}", content_type="application/json").environ
    statuses = []

    def serve():
        body = ResolveOnceWSGIHandler()(environ, lambda status, headers, exc_info=None: statuses.append(status))
        body.close()

    _, resolutions = _root_resolutions(serve)
    assert statuses and statuses[0].startswith("401")
    assert resolutions == 1


def test_a_match_kept_is_reused_only_for_its_path_and_urlconf():
    handler = OneHopASGIHandler()
    request = RequestFactory().get("/api/v1/models")
    kept = request_resolve(request)
    assert handler.resolve_request(request) is kept
    request.path_info = "/api/v1/personas"  # a middleware rewrote the path after the match was kept
    assert handler.resolve_request(request).url_name == "personas"
    request = RequestFactory().get("/api/v1/models")
    kept = request_resolve(request)
    request.urlconf = "config.tests.serving_urls"  # another URLconf, set after the match was kept
    again = handler.resolve_request(request)
    assert again is not kept and again.url_name == "models"
