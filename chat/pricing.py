"""Pricing a call from the catalog: each token class at its own per-million price.

A class with no price of its own (a catalog row without cache prices) is charged at the
full input price, never at $0, and the cost is flagged `estimated`. Above a version's
`long_context_threshold` input tokens, the tier's prices apply to the whole call.
Reasoning is a part of output: priced once, inside output.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from chat.models import ModelPrice
from chat.providers import Usage

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("1E-10")  # the ledger's precision: cents are rounded only where money is shown
INPUT_CLASSES = ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h")
# class: (its price field, its field in the long-context tier); input and output always have a price.
CLASS_FIELDS = {
    "input_uncached": ("input_price", "long_context_input_price"),
    "cache_read": ("cache_read_price", "long_context_cache_read_price"),
    "cache_write_5m": ("cache_write_5m_price", "long_context_cache_write_5m_price"),
    "cache_write_1h": ("cache_write_1h_price", "long_context_cache_write_1h_price"),
    "output": ("output_price", "long_context_output_price"),
}


@dataclass(frozen=True)
class CallCost:
    cost: Decimal  # USD, to 1e-10
    estimated: bool  # a class that occurred had no price of its own and was charged at input
    rates: dict[str, Decimal]  # USD per million used for each class, after the tier
    long_context: bool


def _rates(price: ModelPrice, *, input_tokens: int) -> tuple[dict[str, Decimal], set[str], bool]:
    """(rate per class, the classes without a price of their own, whether the tier applies)."""
    long_context = price.long_context_threshold is not None and input_tokens > price.long_context_threshold
    rates: dict[str, Decimal] = {}
    unpriced: set[str] = set()
    for name, (field, tier_field) in CLASS_FIELDS.items():
        rate = getattr(price, tier_field if long_context else field)
        if rate is None:
            unpriced.add(name)
        rates[name] = rate
    fallback = rates["input_uncached"]
    return {name: fallback if rate is None else rate for name, rate in rates.items()}, unpriced, long_context


def call_cost(*, usage: Usage, price: ModelPrice) -> CallCost:
    """What the provider bills for this usage under this price version, exactly, in USD to 1e-10 (half up)."""
    rates, unpriced, long_context = _rates(price, input_tokens=usage.input_total)
    tokens = usage.classes()
    total = sum(tokens[name] * rate for name, rate in rates.items())
    return CallCost(
        cost=(total / MILLION).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP),
        estimated=any(tokens[name] > 0 for name in unpriced),
        rates=rates,
        long_context=long_context,
    )


def call_cost_ceiling(*, input_tokens: int, output_tokens: int, price: ModelPrice) -> Decimal:
    """The most a call of this size can cost, whatever classes its input turns out to be
    (the dearest input-class rate for all of it): what a budget reservation holds."""
    rates, _, _ = _rates(price, input_tokens=input_tokens)
    total = input_tokens * max(rates[name] for name in INPUT_CLASSES) + output_tokens * rates["output"]
    return (total / MILLION).quantize(COST_QUANTUM, rounding=ROUND_CEILING)
