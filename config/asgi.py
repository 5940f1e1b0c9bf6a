import os

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import FileResponse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain loaded in sync mode and entered once.

    Loaded in async mode, the chain crosses between the event loop and a thread at every
    change of mode: MiddlewareMixin runs each process_request/process_response through
    sync_to_async, our sync-only middlewares (RLS, audit, API log) switch back, and a sync
    view is one more hop; about six crossings a request, each waiting for the loop and the
    GIL among the requests in flight. Here the whole chain and a sync view run in one
    thread-sensitive hop. Async views (reply streams) still return at once: Django runs
    them with async_to_sync, and their streamed body is sent from the loop as before, so an
    open stream still holds no thread.
    """

    def __init__(self):  # not super().__init__(): that loads the chain in async mode
        self.load_middleware(is_async=False)

    async def run_get_response(self, request):
        response = await sync_to_async(self.get_response, thread_sensitive=True)(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):  # as ASGIHandler: the server does the chunking
            response.block_size = self.chunk_size
        return response


django.setup(set_prefix=False)
application = OneHopASGIHandler()
