import asyncio
import os
import threading

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse, HttpResponse, JsonResponse
from django.http.cookie import parse_cookie
from django.urls import set_script_prefix

from config.access_log import access_log_masked
from config.collector import garbage_collector_tune
from config.lifecycle import process_stop
from config.resolving import ResolveOnceMixin
from config.threads import request_thread

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")


class BodyTooLarge(Exception):
    pass


class OneHopASGIHandler(ResolveOnceMixin, ASGIHandler):
    """Django's ASGI handler, with a request's sync work in one hop to a reused thread, and a
    bound on request bodies.

    Django's handler crosses between the event loop and a thread many times a request: loaded
    in async mode, the middleware chain crosses at every change of mode (MiddlewareMixin runs
    each process_request/process_response through sync_to_async, and our sync-only middlewares
    switch back), request_started's receivers take a hop of their own, and so does the close
    that sends request_finished; and each request starts a new thread, and another to join it.
    Every crossing waits for the loop and the GIL among the requests in flight. Here
    request_started, the whole chain (loaded in sync mode), a sync view and, for a response
    already in memory, its close (the database connection goes back to the pool before the
    bytes go out) run in one hop, on a thread reused from request to request (config/threads.py).
    Async views (reply streams) still return at once: Django runs them with async_to_sync, and
    their streamed body is sent from the loop and closed after it, so an open stream holds no
    thread.

    Django spools any body to disk before a view sees it, however large, and uvicorn sets
    no bound: a body over its path's bound (declared, or counted as it arrives) is answered 413
    before more of it is read: UPLOAD_BODY_MAX_BYTES on the upload paths (UPLOAD_PATHS) for a
    caller signed in (a session or an API key, checked first), REQUEST_BODY_MAX_BYTES on every
    other request.
    """

    def __init__(self):  # not super().__init__(): that loads the chain in async mode
        self.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with request_thread():
            await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        # The path as Django resolves it: without the prefix the app is served under, if any.
        path, headers = scope.get("path", "").removeprefix(scope.get("root_path", "")), dict(scope.get("headers") or ())
        limit, signed_in = settings.REQUEST_BODY_MAX_BYTES, None
        if path in settings.UPLOAD_PATHS:
            # An upload's larger bound only for someone signed in, checked before its body is read.
            signed_in = await sync_to_async(_caller_signed_in, thread_sensitive=True)(headers)
            if signed_in:
                limit = settings.UPLOAD_BODY_MAX_BYTES
        declared = headers.get(b"content-length", b"")
        try:
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            body_file = await self.read_body(_bounded(receive, limit))
        except BodyTooLarge:
            await self.send_response(_too_large(path, limit, anonymous_upload=signed_in is False), send)
            return
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            await self._serve(scope, body_file, receive, send)
        finally:
            body_file.close()

    async def _serve(self, scope, body_file, receive, send):
        """Django's ASGIHandler.handle after the body is read, with request_started, the
        response and its close in one hop (see the class)."""
        made = _Made()
        task = asyncio.create_task(self._respond(scope, body_file, send, made))
        # A client that goes away cancels the response (a reply stream then stores and meters
        # what it produced), as in Django's handler.
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        await asyncio.wait([listener, task], return_when=asyncio.FIRST_COMPLETED)
        for each in (listener, task):
            if not each.done():
                each.cancel()
            try:
                await each
            except (asyncio.CancelledError, RequestAborted):
                pass
        if task.cancelled():
            # A streamed response the client left before it was sent is closed all the same (its
            # closers end what its body would have: a prepared reply); one still being made, the
            # thread closes when it is (_response_in_thread).
            response = made.abandon()
            if response is not None and response.streaming:
                try:
                    await _streamed_body_close(response)
                finally:
                    await sync_to_async(response.close, thread_sensitive=True)()
            else:
                await signals.request_finished.asend(sender=self.__class__)
            return
        response = task.result()
        if response.streaming:
            try:
                await _streamed_body_close(response)
            finally:
                await sync_to_async(response.close, thread_sensitive=True)()

    async def _respond(self, scope, body_file, send, made):
        response = await sync_to_async(self._response_in_thread, thread_sensitive=True)(scope, body_file, made)
        await self.send_response(response, send)
        return response

    def _response_in_thread(self, scope, body_file, made):
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):  # as ASGIHandler: the server does the chunking
                response.block_size = self.chunk_size
        if not response.streaming:
            response.close()  # request_finished: the connection goes back before the bytes go out
        elif made.made(response):  # the client left while it was made: nothing will send it
            response.close()
        return response


async def _streamed_body_close(response) -> None:
    """Close a streamed response's async body, on the loop it runs on. Django's close() runs only
    sync closers and its send_response closes only its own wrapper: a body left suspended (the
    client went while a send waited) ran on until the garbage collector found it."""
    body = getattr(response, "_iterator", None)  # where StreamingHttpResponse keeps the body it was given
    if getattr(response, "is_async", False) and hasattr(body, "aclose"):
        await body.aclose()


async def _lifespan(receive, send) -> None:
    """The server's start and stop: at the stop, what the process keeps in memory is sent
    (config/lifecycle.py; uvicorn's workers end without running atexit)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await sync_to_async(process_stop, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Made:
    """The response a request's thread made, between it and the loop: whichever of the two
    learns second that the client left and the response exists closes it (once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._response = None
        self._abandoned = False

    def made(self, response) -> bool:
        """The thread has the response; True when the client already left (the thread closes it)."""
        with self._lock:
            self._response = response
            return self._abandoned

    def abandon(self):
        """The client left; the response to close, or None when the thread has not made it yet."""
        with self._lock:
            self._abandoned = True
            return self._response


def _bounded(receive, limit: int):
    received = 0

    async def bounded_receive():
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise BodyTooLarge
        return message

    return bounded_receive


def _caller_signed_in(headers: dict[bytes, bytes]) -> bool:
    """accounts' check of the request's session cookie or API key, on the request's thread; the
    connection it used goes back to the pool (no request_started follows a refused body)."""
    from accounts.services import caller_signed_in  # at request time: the apps are loaded by then

    try:
        cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin-1"))
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        return caller_signed_in(session_key=cookies.get(settings.SESSION_COOKIE_NAME), authorization=authorization)
    finally:
        close_old_connections()


def _too_large(path: str, limit: int, *, anonymous_upload: bool = False) -> HttpResponse:
    sentence = f"The request body is larger than {limit:,} bytes."
    if anonymous_upload:
        sentence += " Sign in (or send an API key) to upload a larger file."
    if path.startswith("/api/"):
        response = JsonResponse({"message": sentence, "extra": {"code": "too_large"}}, status=413)
    elif path.startswith("/v1/"):  # the OpenAI-compatible gateway answers in OpenAI's shape, which its SDKs read
        from chat.gateway import openai_error  # at request time: the apps are loaded by then

        response = JsonResponse(openai_error(413, sentence, code="request_too_large"), status=413)
    else:
        response = HttpResponse(sentence, status=413, content_type="text/plain; charset=utf-8")
    # Else uvicorn keeps the connection and reads the refused body to its end, however large.
    response["Connection"] = "close"
    return response


django.setup(set_prefix=False)
access_log_masked()
application = OneHopASGIHandler()
garbage_collector_tune()
