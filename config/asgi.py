import os

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import FileResponse, HttpResponse, JsonResponse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")


class BodyTooLarge(Exception):
    pass


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain loaded in sync mode and entered once,
    and a bound on request bodies.

    Loaded in async mode, the chain crosses between the event loop and a thread at every
    change of mode: MiddlewareMixin runs each process_request/process_response through
    sync_to_async, our sync-only middlewares (RLS, audit, API log) switch back, and a sync
    view is one more hop; about six crossings a request, each waiting for the loop and the
    GIL among the requests in flight. Here the whole chain and a sync view run in one
    thread-sensitive hop. Async views (reply streams) still return at once: Django runs
    them with async_to_sync, and their streamed body is sent from the loop as before, so an
    open stream still holds no thread.

    Django spools any body to disk before a view sees it, however large, and uvicorn sets
    no bound: a body over REQUEST_BODY_MAX_BYTES (declared, or counted as it arrives) is
    answered 413 before more of it is read.
    """

    def __init__(self):  # not super().__init__(): that loads the chain in async mode
        self.load_middleware(is_async=False)

    async def handle(self, scope, receive, send):
        limit = settings.REQUEST_BODY_MAX_BYTES
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        try:
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            await super().handle(scope, _bounded(receive, limit), send)
        except BodyTooLarge:
            await self.send_response(_too_large(scope.get("path", ""), limit), send)

    async def run_get_response(self, request):
        response = await sync_to_async(self.get_response, thread_sensitive=True)(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):  # as ASGIHandler: the server does the chunking
            response.block_size = self.chunk_size
        return response


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


def _too_large(path: str, limit: int) -> HttpResponse:
    sentence = f"The request body is larger than {limit:,} bytes."
    if path.startswith("/api/"):
        return JsonResponse({"message": sentence, "extra": {"code": "too_large"}}, status=413)
    return HttpResponse(sentence, status=413, content_type="text/plain; charset=utf-8")


django.setup(set_prefix=False)
application = OneHopASGIHandler()
