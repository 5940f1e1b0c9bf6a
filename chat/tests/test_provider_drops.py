"""A stream that drops midway is an interruption whichever HTTP library the SDK runs on:
`httpx2` (what the adapters pass today) or `httpx` (which `openai` and `google-genai` also
accept, and raise from their streams as they are)."""

from __future__ import annotations

import httpx
import pytest

from chat.providers import ProviderError, gemini_api, openai_api
from chat.tests.provider_servers import Reply, gemini_stream, openai_stream
from chat.tests.test_providers import GEMINI_CLASSES, PARTS, PROMPT_ESTIMATE, classes, collect, gemini_running, request_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def over_httpx(monkeypatch):
    """The adapters' SDK clients built on an `httpx` client instead of the shared `httpx2` pool."""
    for module in (gemini_api, openai_api):
        monkeypatch.setattr(module, "http_client", lambda **_: httpx.AsyncClient())


async def test_gemini_stream_dropped_under_httpx_keeps_the_reported_totals(server, over_httpx):
    server.queue(Reply(events=gemini_stream(PARTS, [gemini_running(2), gemini_running(5), gemini_running(9)]), cut_after=2))
    with pytest.raises(ProviderError) as caught:
        await collect("gemini", request_for("gemini", server))
    error = caught.value
    assert error.kind == "interrupted" and error.partial_text == "Hello world, "
    assert classes(error.usage)[:4] == GEMINI_CLASSES[:4] and error.usage.output == 85 and not error.usage.estimated


async def test_openai_stream_dropped_under_httpx_estimates_what_never_came(server, over_httpx):
    server.queue(Reply(events=openai_stream(PARTS, None), cut_after=3))
    with pytest.raises(ProviderError) as caught:
        await collect("openai", request_for("openai", server))
    error = caught.value
    assert error.kind == "interrupted" and error.partial_text == "Hello world, "
    assert classes(error.usage) == (PROMPT_ESTIMATE, 0, 0, 0, 4, 0) and error.usage.estimated
