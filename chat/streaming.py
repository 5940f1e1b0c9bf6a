"""The reply as server-sent events, one response shape for the pages and the API."""

from __future__ import annotations

import functools
import json
from contextlib import aclosing

from django.http import StreamingHttpResponse

from chat import services


async def _server_sent_events(events):
    # Closed with this body (config/asgi.py closes it), the reply's stream ends at once: left to
    # the garbage collector, it stayed open, alive and reserved, until a collection found it.
    async with aclosing(events):
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"


def reply_stream_response(pending: services.PendingReply) -> StreamingHttpResponse:
    """Deltas, then one `done` event; the body opens its own transactions (see message_stream)."""
    response = StreamingHttpResponse(
        _server_sent_events(services.message_stream(pending=pending)), content_type="text/event-stream", status=200
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies pass each event on as it comes
    return closes_unstarted(response, pending)


def closes_unstarted(response: StreamingHttpResponse, pending: services.PendingReply) -> StreamingHttpResponse:
    """The response, closing its prepared reply if it is closed before its body ran (the client
    left first: config/asgi.py closes such a response)."""
    response._resource_closers.append(functools.partial(services.stream_close_unstarted, pending))
    return response
