"""The golden usage table (golden_usage.json): every case through its adapter and local
wire-format server, streamed and not, then priced by `call_cost`, to the exact expected cost."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from chat.models import ModelPrice
from chat.pricing import call_cost
from chat.providers import ChatMessage, ProviderError, Usage, provider_for
from chat.providers.openai_api import usage_from_openai
from chat.tests.provider_servers import (
    ProviderServer,
    Reply,
    anthropic_message,
    anthropic_stream,
    gemini_response,
    gemini_stream,
    openai_completion,
    openai_stream,
)
from chat.tests.test_providers import collect, request_for

pytestmark = pytest.mark.anyio

GOLDEN = json.loads((Path(__file__).parent / "golden_usage.json").read_text())
MESSAGES = tuple(ChatMessage(role, content) for role, content in GOLDEN["messages"])
CASES = {case["id"]: case for case in GOLDEN["cases"]}
# Anthropic's message_start carries the input and cache counts, with a placeholder output count.
ANTHROPIC_START_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")


def _runs() -> list:
    runs = []
    for case in GOLDEN["cases"]:
        if case.get("api") == "responses":
            runs.append(pytest.param(case["id"], "normalizer", id=f"{case['id']}-normalizer"))
        elif case["streamed"]:
            runs.append(pytest.param(case["id"], "stream", id=f"{case['id']}-stream"))
        else:
            runs += [pytest.param(case["id"], mode, id=f"{case['id']}-{mode}") for mode in ("complete", "stream")]
    return runs


def _reply(case: dict, mode: str) -> Reply:
    """The case's payload as its provider sends it: a JSON body, or SSE events (a final usage replayed as a stream)."""
    provider, payload, scripted = case["provider"], case.get("payload"), case.get("stream")
    text = case.get("text", "Paris.")
    if mode == "complete":
        body = {"openai": openai_completion, "anthropic": anthropic_message, "gemini": gemini_response}[provider](text, payload)
        return Reply(body=body)
    if scripted:
        parts, cut_after = scripted["parts"], scripted.get("cut_after")
        if provider == "openai":
            return Reply(events=openai_stream(parts, scripted["usage"]), cut_after=cut_after)
        if provider == "anthropic":
            events = anthropic_stream(parts, scripted["message_start_usage"], scripted["message_delta_usage"])
            return Reply(events=events, cut_after=cut_after)
        return Reply(events=gemini_stream(parts, scripted["usages"]), cut_after=cut_after)
    parts = [text[:3], text[3:]] if text else [""]
    if provider == "openai":
        return Reply(events=openai_stream(parts, payload))
    if provider == "anthropic":
        start = {name: value for name, value in payload.items() if name in ANTHROPIC_START_FIELDS}
        return Reply(events=anthropic_stream(parts, {**start, "output_tokens": 1}, payload))
    running = [{**payload, "candidatesTokenCount": 1}] if text else []  # every chunk repeats the running totals
    return Reply(events=gemini_stream(parts, [*running, payload]))


async def _usage(case: dict, mode: str, server: ProviderServer) -> Usage:
    if mode == "normalizer":
        return usage_from_openai(case["payload"])
    server.queue(_reply(case, mode))
    request = request_for(case["provider"], server, messages=MESSAGES)
    if mode == "complete":
        _, usage, _ = await provider_for(case["provider"]).complete(request)
        return usage
    if (case.get("stream") or {}).get("cut_after") is None:
        _, done = await collect(case["provider"], request)
        return done.usage
    with pytest.raises(ProviderError) as caught:
        await collect(case["provider"], request)
    assert caught.value.kind == "interrupted"
    return caught.value.usage


def _price(row: dict) -> ModelPrice:
    return ModelPrice(**{name: Decimal(value) if name.endswith("_price") else value for name, value in row.items()})


def test_the_table_has_the_cases_the_issue_names():
    assert len(CASES) >= 15
    assert {case["provider"] for case in CASES.values()} == {"openai", "anthropic", "gemini"}
    assert {"anthropic-stream-cut-after-message-start", "openai-stream-cut-before-usage", "openai-responses-shape"} <= set(CASES)
    assert all(case["arith"] and Decimal(case["expected"]["cost"]) > 0 for case in CASES.values())


@pytest.mark.parametrize("case_id, mode", _runs())
async def test_golden_case(server, case_id, mode):
    case = CASES[case_id]
    expected = case["expected"]
    usage = await _usage(case, mode, server)
    priced = call_cost(usage=usage, price=_price(case["price"]))
    assert usage.classes() == {name: expected[name] for name in usage.classes()}
    assert (usage.estimated or priced.estimated) is expected["estimated"]
    assert priced.cost == Decimal(expected["cost"]) and str(priced.cost) == expected["cost"]
    assert bool(usage.raw) is case.get("raw_reported", True)  # the provider's usage object, kept for the message's metadata
