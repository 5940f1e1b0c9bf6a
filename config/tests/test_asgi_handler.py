"""config/asgi.py's OneHopASGIHandler: the middleware chain and a sync view run in one hop from
the event loop to a thread; Django's own handler (chain in async mode) crosses seven times."""

from unittest import mock

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler

from config.asgi import OneHopASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)  # the request runs on another thread's connection


async def _get(application, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 40000),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    await communicator.receive_output(5)  # the body
    await communicator.wait(5)
    return start["status"]


def _crossings(application, path: str) -> tuple[int, list[str]]:
    """Serve one request; name every hop between the loop and a thread the handler made for it."""
    hops: list[str] = []
    to_thread, to_loop = SyncToAsync.__call__, AsyncToSync.__call__

    async def counted_to_thread(self, *args, **kwargs):
        hops.append(f"to thread: {getattr(self.func, '__qualname__', self.func)}")
        return await to_thread(self, *args, **kwargs)

    def counted_to_loop(self, *args, **kwargs):
        hops.append(f"to loop: {getattr(self.awaitable, '__qualname__', self.awaitable)}")
        return to_loop(self, *args, **kwargs)

    request = async_to_sync(_get)  # made before counting: this hop is the test's own
    with mock.patch.object(SyncToAsync, "__call__", counted_to_thread), mock.patch.object(AsyncToSync, "__call__", counted_to_loop):
        status = request(application, path)
    # Not the handler's per-request work: the test's own call, request_started's receivers, the close.
    bookkeeping = ("_get", "Signal.asend", "HttpResponseBase.close")
    return status, [hop for hop in hops if not any(name in hop for name in bookkeeping)]


def test_a_sync_view_and_the_whole_middleware_chain_run_in_one_hop():
    status, hops = _crossings(OneHopASGIHandler(), "/health/live")
    assert status == 200
    assert hops == ["to thread: BaseHandler.get_response"]


def test_djangos_handler_crosses_at_every_change_of_mode():
    """The baseline the one-hop handler is measured against (bench_serving serves both)."""
    status, hops = _crossings(ASGIHandler(), "/health/live")
    assert status == 200
    assert len(hops) == 7, hops
