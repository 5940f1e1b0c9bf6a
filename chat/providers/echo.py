"""The built-in `echo` provider: offline and deterministic, so the app works with no keys.

The reply is "You said: <the last user message>", streamed one word per `Delta`
(words keep their following space) with `delay` seconds before each word
(settings.CHAT_ECHO_DELAY unless the caller passes one).

The reply stops at `max_tokens` words (finish reason "length"), as a provider stops at its
output limit. Token counts, exact by definition (no estimate): input is the number of
whitespace-separated words over all prompt messages; output is the number of
whitespace-separated words of the reply. No cache, no reasoning.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from django.conf import settings

from .base import ChatRequest, Delta, Done, Usage


def reply_for(request: ChatRequest) -> str:
    """The reply, cut to `max_tokens` words as a provider cuts at its output limit."""
    last_user = next((message.content for message in reversed(request.messages) if message.role == "user"), "")
    reply = f"You said: {last_user}"
    if request.max_tokens is not None:
        reply = "".join(re.findall(r"\S+\s*", reply)[: request.max_tokens]).rstrip()
    return reply


def _finish(request: ChatRequest, reply: str) -> str:
    return "length" if request.max_tokens is not None and len(reply.split()) >= request.max_tokens else "stop"


def usage_for(request: ChatRequest, reply: str) -> Usage:
    prompt_words = sum(len(message.content.split()) for message in request.messages)
    output_words = len(reply.split())
    return Usage(input_uncached=prompt_words, output=output_words, raw={"prompt_words": prompt_words, "reply_words": output_words})


# Built in, it cuts its own reply at max_tokens (reply_for), a word a token however long: the
# stream's guard against servers that ignore the cap (chat.services._StreamCap) is not for it.
STOPS_AT_MAX_TOKENS = True


async def stream(request: ChatRequest, *, delay: float | None = None) -> AsyncIterator[Delta | Done]:
    delay = settings.CHAT_ECHO_DELAY if delay is None else delay
    reply = reply_for(request)
    for word in re.findall(r"\S+\s*", reply):  # the reply starts with a word, so this covers all of it
        await asyncio.sleep(delay)
        yield Delta(word)
    yield Done(usage_for(request, reply), _finish(request, reply))


async def complete(request: ChatRequest, *, delay: float | None = None) -> tuple[str, Usage, str]:
    reply = reply_for(request)
    await asyncio.sleep(settings.CHAT_ECHO_DELAY if delay is None else delay)
    return reply, usage_for(request, reply), _finish(request, reply)
