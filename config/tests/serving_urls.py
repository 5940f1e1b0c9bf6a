"""Test-only URLs (config.settings.serving_test): the real ones, plus probes under /_serving/.

Never imported by production URLs: a slow async stream (does a stream hold a worker?),
the row-level security context a request starts with (does a pooled connection carry
any?), and a bare view answering a chat reply's JSON (the framework's floor in the bench), also as
the metered send's view is marked (no transaction held by the middleware).
"""

import asyncio
import json

from django.db import connections
from django.http import JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from config.db.rls import own_transactions
from config.urls import handler400, handler404, handler500, urlpatterns  # noqa: F401  handlers are looked up here

CHAT_REPLY = {
    "id": "0b9f6c1e-8a52-4c1e-9d77-5f2f1f7b3a10",
    "conversation_id": "6f1d2c3b-4a59-4e8f-b0c1-2d3e4f5a6b7c",
    "role": "assistant",
    "content": "Hello! How can I help you today?",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "input_tokens": 12,
    "output_tokens": 9,
    "total_tokens": 21,
    "cost": "0.000007",
    "latency_ms": 412,
    "created_at": "2026-11-29T22:00:00Z",
}


async def stream(request):
    """Server-sent events: `events` of them, `interval` seconds apart, on the event loop."""
    events, interval = int(request.GET.get("events", 20)), float(request.GET.get("interval", 0.25))

    async def body():
        for n in range(events):
            yield f"data: {json.dumps({'n': n})}\n\n"
            await asyncio.sleep(interval)
        yield "event: done\ndata: {}\n\n"

    return StreamingHttpResponse(body(), content_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _app_connection_state() -> dict:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), current_setting('app.user_id', true)")
        pid, user_id = cur.fetchone()
    return {"pid": pid, "user_id": user_id or ""}


def context(request):
    """The app connection's context as this request finds it (the middleware sets none without a session)."""
    return JsonResponse(_app_connection_state())


def context_session_set(request):
    """A session-level setting (not transaction-local) that outlives the request unless the pool resets it."""
    with connections["default"].cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, false)", [request.GET["user_id"]])
    return JsonResponse(_app_connection_state())


@csrf_exempt
def chat_reply(request):
    return JsonResponse(CHAT_REPLY, status=201 if request.method == "POST" else 200)


@csrf_exempt
@own_transactions("POST")
def chat_reply_own_transactions(request):
    """chat_reply marked as the metered send's view is (rls.own_transactions): the middleware opens
    no transaction for its POST, so no pooled connection is checked out for it."""
    return chat_reply(request)


urlpatterns = [
    path("_serving/stream", stream),
    path("_serving/context", context),
    path("_serving/context/session-set", context_session_set),
    path("_serving/chat-reply", chat_reply),
    path("_serving/chat-reply-own-transactions", chat_reply_own_transactions),
    *urlpatterns,
]
