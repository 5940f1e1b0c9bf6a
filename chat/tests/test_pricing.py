"""chat.pricing: each token class at its own catalog price, to 1e-10 USD, flagged where a class had no price."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.services import provider_credential_set
from analytics.models import TokenUsage
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.models import ModelPrice
from chat.pricing import call_cost, call_cost_ceiling
from chat.providers import Usage
from chat.tests.factories import price_add
from chat.tests.provider_servers import ProviderServer, Reply, openai_completion
from config.db import rls

SONNET = {
    "input_price": Decimal("3"),
    "output_price": Decimal("15"),
    "cache_read_price": Decimal("0.3"),
    "cache_write_5m_price": Decimal("3.75"),
    "cache_write_1h_price": Decimal("6"),
    "long_context_threshold": 200_000,
    "long_context_input_price": Decimal("6"),
    "long_context_output_price": Decimal("22.5"),
}


def test_half_a_quantum_rounds_up_to_1e_10():
    # 1 token at 0.00005 per million is 5e-11 USD: half of the ledger's quantum, rounded up (half-even would give 0).
    price = ModelPrice(input_price=Decimal("0.00005"), output_price=Decimal("0"))
    assert call_cost(usage=Usage(input_uncached=1), price=price).cost == Decimal("1E-10")
    assert call_cost(usage=Usage(input_uncached=3), price=price).cost == Decimal("2E-10")  # 1.5e-10 -> 2e-10


def test_reasoning_is_inside_output_and_never_charged_twice():
    price = ModelPrice(input_price=Decimal("1"), output_price=Decimal("10"))
    priced = call_cost(usage=Usage(input_uncached=100, output=1000, reasoning=800), price=price)
    assert priced.cost == Decimal("0.0101")  # (100×1 + 1000×10) / 1e6
    assert not priced.estimated and not priced.long_context


def test_a_tier_class_without_its_own_price_is_charged_at_the_tier_input_price_and_flagged():
    # Above the threshold: Sonnet's row here has no long-context cache prices.
    priced = call_cost(usage=Usage(input_uncached=200_000, cache_read=1000, output=10), price=ModelPrice(**SONNET))
    assert priced.long_context and priced.estimated
    assert priced.rates == {
        "input_uncached": Decimal("6"),
        "cache_read": Decimal("6"),
        "cache_write_5m": Decimal("6"),
        "cache_write_1h": Decimal("6"),
        "output": Decimal("22.5"),
    }
    assert priced.cost == Decimal("1.206225")  # (200000×6 + 1000×6 + 10×22.5) / 1e6
    # A class without a price that did not occur flags nothing.
    assert not call_cost(usage=Usage(input_uncached=200_001, output=10), price=ModelPrice(**SONNET)).estimated


def test_the_ceiling_is_the_dearest_input_class_and_the_tier_for_the_calls_size():
    price = ModelPrice(**SONNET)
    assert call_cost_ceiling(input_tokens=1000, output_tokens=100, price=price) == Decimal("0.0075")  # 1000×6 (1-hour write) + 100×15
    assert call_cost_ceiling(input_tokens=200_001, output_tokens=100, price=price) == Decimal("1.202256")  # 200001×6 + 100×22.5
    for usage in (Usage(input_uncached=1000, output=100), Usage(cache_write_1h=1000, output=100), Usage(cache_read=1000, output=100)):
        assert call_cost(usage=usage, price=price).cost <= call_cost_ceiling(input_tokens=1000, output_tokens=100, price=price)


@pytest.fixture
def openai_server():
    server = ProviderServer().start()
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_reply_is_metered_per_class_and_flagged_when_a_class_had_no_price(alice, plans, openai_server):
    put_on_plan(organization_of(alice), plans["pro"])  # Free's models are a list; a new one needs Pro
    with rls.privileged(reason="test"):
        provider_credential_set(user=alice, provider="openai", api_key="sk-user-own-key-1234567890", base_url=f"{openai_server.url}/v1")
    price_add(provider="openai", model="gpt-no-cache-price", input_price="1", output_price="2")
    usage = {"prompt_tokens": 2000, "completion_tokens": 100, "total_tokens": 2100, "prompt_tokens_details": {"cached_tokens": 1000}}
    openai_server.queue(Reply(body=openai_completion("Paris.", usage)), Reply(body=openai_completion("Madrid.", usage)))

    cached = services.message_send(user=alice, content="Capital of France?", provider="openai", model="gpt-4o-mini").message
    assert cached.cost == Decimal("0.000285")  # (1000×0.15 + 1000×0.075 cached + 100×0.60) / 1e6
    assert cached.metadata["estimated"] is False and cached.metadata["usage"]["cache_read"] == 1000

    unpriced = services.message_send(user=alice, content="Of Spain?", provider="openai", model="gpt-no-cache-price").message
    assert unpriced.cost == Decimal("0.0022")  # the cache read at the input price: (2000×1 + 100×2) / 1e6
    assert unpriced.metadata["estimated"] is True
    with rls.privileged(reason="test"):
        assert sorted(TokenUsage.objects.values_list("cost", flat=True)) == [Decimal("0.000285"), Decimal("0.0022")]
