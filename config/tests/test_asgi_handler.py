"""config/asgi.py's OneHopASGIHandler: request_started, the middleware chain, a sync view and the
close run in one hop from the event loop to a thread reused from request to request (Django's
own handler, chain in async mode, crosses nine times and starts two threads a request); a
request body over its path's bound (REQUEST_BODY_MAX_BYTES, or UPLOAD_BODY_MAX_BYTES on an import
upload) is refused with 413 before the rest is read."""

import asyncio
import contextlib
import itertools
import json
import threading
import time
from unittest import mock

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from accounts.tests.factories import make_user
from config.asgi import OneHopASGIHandler
from config.tests.asgi_scope import http_scope

pytestmark = pytest.mark.django_db(transaction=True)  # the request runs on another thread's connection


async def _get(application, path: str) -> int:
    scope = http_scope("GET", path)
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    await communicator.receive_output(5)  # the body
    await communicator.wait(5)
    return start["status"]


# A view that reads nothing, reached through the whole middleware chain: /health/live, with the
# middleware that answers it before the chain (config/health.py) taken out for these tests.
CHAIN_PATH = "/health/live"


@pytest.fixture(autouse=True)
def whole_chain(settings):
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != "config.health.HealthFirstMiddleware"]


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
    return status, [hop for hop in hops if "_get" not in hop]  # not the test's own call


def _thread_starts(application, path: str, requests: int) -> int:
    """Threads started while `application` serves `requests` GETs, one after another."""
    starts, start = [], threading.Thread.start

    def counted_start(self):
        starts.append(self.name)
        return start(self)

    async def serve():
        for _ in range(requests):
            assert await _get(application, path) == 200

    run = async_to_sync(serve)
    with mock.patch.object(threading.Thread, "start", counted_start):
        run()
    return len(starts)


def test_a_request_runs_request_started_the_middleware_chain_a_sync_view_and_its_close_in_one_hop():
    status, hops = _crossings(OneHopASGIHandler(), CHAIN_PATH)
    assert status == 200
    assert hops == ["to thread: OneHopASGIHandler._response_in_thread"]


def test_djangos_handler_crosses_at_every_change_of_mode():
    """The baseline the one-hop handler is measured against (bench_serving serves both): seven
    crossings in the chain, one for request_started's receivers, one for the close."""
    status, hops = _crossings(ASGIHandler(), CHAIN_PATH)
    assert status == 200
    assert len(hops) == 9, hops


def test_requests_reuse_a_thread_where_djangos_handler_starts_two_each():
    handler = OneHopASGIHandler()
    _thread_starts(handler, CHAIN_PATH, 1)  # the first request may start the thread it will keep
    # One start is the test's own: async_to_sync runs its event loop on a new thread.
    assert _thread_starts(handler, CHAIN_PATH, 5) == 1
    assert _thread_starts(ASGIHandler(), CHAIN_PATH, 5) == 1 + 10  # each request's thread, and one to join it


async def _post(path: str, body_chunks, *, declared: int | None = None, headers=(), root_path: str = "") -> tuple[int, bytes, int]:
    """POST the chunks (an iterator: more_body until it ends) to a fresh handler; the status,
    the response body, and how many chunks the handler read. `root_path`: served under a prefix
    (the scope's path then starts with it, as ASGI servers send it)."""
    headers = [(b"content-type", b"application/json"), *headers]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {**http_scope("POST", root_path + path, headers), "root_path": root_path}
    chunks, read, answer = iter(body_chunks), 0, {"status": 0, "body": b""}
    pending = next(chunks, None)

    async def receive():
        nonlocal pending, read
        if pending is None:
            await asyncio.Event().wait()  # the body is over; the client never disconnects
        chunk, pending = pending, next(chunks, None)
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": pending is not None}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await OneHopASGIHandler()(scope, receive, send)
    return answer["status"], answer["body"], read


MIB = 1024 * 1024


def test_a_body_over_the_limit_is_refused_as_it_arrives_without_reading_the_rest(settings):
    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    endless = itertools.repeat(b"x" * MIB)  # chunked, no declared length, never ends
    status, body, read = async_to_sync(_post)("/api/v1/conversations", endless)
    assert status == 413 and read == 3  # the third MiB passes the limit: nothing more is read
    assert json.loads(body) == {"message": "The request body is larger than 2,097,152 bytes.", "extra": {"code": "too_large"}}


def _signed_in_cookie(client) -> tuple[bytes, bytes]:
    client.force_login(make_user())
    return b"cookie", f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def test_a_declared_length_over_the_limit_is_refused_before_any_of_the_body_is_read(settings, client):
    settings.UPLOAD_BODY_MAX_BYTES = 2 * MIB  # the import page: an upload path
    cookie = _signed_in_cookie(client)
    status, body, read = async_to_sync(_post)("/chat/porting/", iter([b"x" * MIB]), declared=10 * MIB, headers=[cookie])
    assert (status, read) == (413, 0)
    assert body.decode() == "The request body is larger than 2,097,152 bytes."


def test_an_upload_path_takes_a_large_body_only_from_someone_signed_in(settings, client):
    """An anonymous client POSTs 5 MiB to the import page. Was: the upload path's bound (201 MB by
    default) held for anyone, so anyone could have hundreds of megabytes spooled to disk before
    the page said they were not signed in. Should: without a live session or API key, the upload
    path has every other path's bound; signed in, the upload's."""
    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    five = [b"x" * MIB] * 5
    status, body, read = async_to_sync(_post)("/chat/porting/", iter(five), declared=5 * MIB)
    assert (status, read) == (413, 0)
    assert body.decode() == "The request body is larger than 2,097,152 bytes. Sign in (or send an API key) to upload a larger file."
    forged = (b"cookie", f"{settings.SESSION_COOKIE_NAME}={'a' * 32}".encode())  # well-formed, no such session
    assert async_to_sync(_post)("/chat/porting/", iter(five), headers=[forged])[::2] == (413, 3)
    # Signed in, the whole body is read and the page answers (403: this raw POST has no CSRF token).
    status, _body, read = async_to_sync(_post)("/chat/porting/", iter(five), declared=5 * MIB, headers=[_signed_in_cookie(client)])
    assert (status, read) == (403, 5)


def test_an_upload_path_under_a_root_path_keeps_its_bounds(settings, client):
    """Served under a prefix (uvicorn --root-path /confab), the scope's path starts with it. Was:
    the upload paths were matched against it whole, so a signed-in upload had every other path's
    bound, and an API path's 413 was plain text. Should: matched as Django matches, without the prefix."""
    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    five = [b"x" * MIB] * 5
    cookie = _signed_in_cookie(client)
    assert async_to_sync(_post)("/chat/porting/", iter(five), declared=5 * MIB, headers=[cookie], root_path="/confab")[::2] == (403, 5)
    status, body, _read = async_to_sync(_post)("/api/v1/conversations", iter(five), declared=5 * MIB, root_path="/confab")
    assert (status, json.loads(body)["extra"]["code"]) == (413, "too_large")


def test_a_signed_in_upload_behind_a_proxy_that_adds_its_own_bearer_token_keeps_the_upload_bound(settings, client):
    """A sign-in proxy (oauth2-proxy and the like) adds `Authorization: Bearer <its token>` to a
    signed-in browser's requests. Was: a bearer that was not a live Confab key answered "not signed
    in" without looking at the session: a 413 at the small bound. Should: the session decides."""
    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    proxy = (b"authorization", b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl")
    status, _body, read = async_to_sync(_post)("/chat/porting/", iter([b"x" * MIB] * 5), headers=[_signed_in_cookie(client), proxy])
    assert (status, read) == (403, 5)  # read whole; the page answered (no CSRF token in this raw POST)


def test_an_upload_to_the_import_api_takes_a_large_body_only_with_a_live_api_key(settings):
    """As above for /api/v1/imports with `Authorization: Bearer ck_...`: a revoked or unknown key
    is nobody."""
    from accounts.services import api_key_create, api_key_revoke
    from config.db import rls

    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    user = make_user()
    with rls.privileged(reason="test: a key to upload with"):
        key, secret = api_key_create(user=user, name="imports", scopes=["chat:write"])
    bearer = (b"authorization", f"Bearer {secret}".encode())
    status, body, read = async_to_sync(_post)("/api/v1/imports", iter([b"x" * MIB] * 5), headers=[bearer])
    assert read == 5 and status == 400, body  # the view read it: not a zip upload
    with rls.privileged(reason="test: revoke"):
        api_key_revoke(user=user, api_key=key)
    status, body, read = async_to_sync(_post)("/api/v1/imports", iter([b"x" * MIB] * 5), headers=[bearer])
    assert (status, read) == (413, 3)
    assert json.loads(body)["extra"] == {"code": "too_large"}
    unknown = (b"authorization", b"Bearer ck_abcdefghij_" + b"z" * 30)
    assert async_to_sync(_post)("/api/v1/imports", iter([b"x" * MIB] * 5), headers=[unknown])[::2] == (413, 3)


def test_the_gateway_refuses_a_body_over_the_limit_in_openais_shape(settings):
    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    status, body, read = async_to_sync(_post)("/v1/chat/completions", iter([b"x" * MIB]), declared=10 * MIB)
    assert (status, read) == (413, 0)
    error = json.loads(body)["error"]
    assert error == {
        "message": "The request body is larger than 2,097,152 bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }


def test_a_body_within_the_limit_reaches_the_view(settings):
    settings.REQUEST_BODY_MAX_BYTES = 2 * MIB
    padding = json.dumps({"content": "x" * (MIB // 2)}).encode()
    status, body, read = async_to_sync(_post)("/api/v1/conversations", iter([padding[: MIB // 4], padding[MIB // 4 :]]))
    assert status == 401 and read == 2  # the view answered: no credentials


def test_a_task_kept_with_the_request_finishes_its_sync_work_on_the_requests_thread_before_the_context_closes():
    """A reply stream's ending (chat.services._shielded) may outlive its response when the
    client's cancellation arrives twice; its sync calls need the request's thread, which
    refuses them once the context has closed. Kept, the context waits for it."""
    from asgiref.sync import sync_to_async

    from config.threads import request_task_keep, request_thread

    async def serve(keep: bool):
        request_thread_id, ending = None, None

        async def ending_work():
            await asyncio.sleep(0.05)  # still running when the response is over
            return await sync_to_async(threading.get_ident, thread_sensitive=True)()

        async with request_thread():
            request_thread_id = await sync_to_async(threading.get_ident, thread_sensitive=True)()
            ending = asyncio.ensure_future(ending_work())
            if keep:
                request_task_keep(ending)
        done_at_exit = ending.done()
        try:
            return request_thread_id, done_at_exit, await ending
        except RuntimeError as exc:
            return request_thread_id, done_at_exit, exc

    request_thread_id, done_at_exit, ending_thread_id = async_to_sync(serve)(True)
    assert done_at_exit and ending_thread_id == request_thread_id
    _, done_at_exit, refused = async_to_sync(serve)(False)  # what the keeping prevents
    assert not done_at_exit and isinstance(refused, RuntimeError)


def test_a_thread_still_running_an_abandoned_view_is_not_handed_to_the_next_request():
    """A client that goes away while its sync view still runs (a plain send waiting on its
    provider) cancels the response, not the thread's work: that thread is not reused, so the
    next request does not queue behind the abandoned view."""
    from asgiref.sync import sync_to_async

    from config.threads import request_thread

    release = threading.Event()

    async def serve():
        async with request_thread():
            first = await sync_to_async(threading.get_ident, thread_sensitive=True)()
            view = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=True)(10))
            await asyncio.sleep(0.05)
            view.cancel()  # the client went away; the view runs on
            with contextlib.suppress(asyncio.CancelledError):
                await view
        started = time.monotonic()
        async with request_thread():
            second = await sync_to_async(threading.get_ident, thread_sensitive=True)()
        waited = time.monotonic() - started
        release.set()
        return first, second, waited

    first, second, waited = async_to_sync(serve)()
    assert second != first and waited < 2  # queued behind the view, it would wait until release (10 s)


def test_a_burst_of_requests_leaves_no_more_idle_threads_than_the_cap(monkeypatch):
    """N requests at once (N streams open) each need a thread; once they end, at most
    IDLE_THREADS_KEPT wait for the next requests and the rest end. Was: all N stayed, for good."""
    from asgiref.sync import sync_to_async

    from config import threads

    threads.idle_threads_stop()
    monkeypatch.setattr(threads, "IDLE_THREADS_KEPT", 3, raising=False)
    gate = asyncio.Event()

    async def one():
        async with threads.request_thread():
            await gate.wait()
            return await sync_to_async(threading.get_ident, thread_sensitive=True)()

    async def burst():
        requests = [asyncio.ensure_future(one()) for _ in range(8)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*requests)

    idents = async_to_sync(burst)()
    assert len(set(idents)) == 8 and len(threads._idle) == 3
    threads.idle_threads_stop()
