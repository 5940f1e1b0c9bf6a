"""Pricing a call from the catalog (each token class at its own per-million price), and
the catalog's price versions.

A class with no price of its own (a catalog row without cache prices) is charged at the
full input price, never at $0, and the cost is flagged `estimated`. Above a version's
`long_context_threshold` input tokens, the tier's prices apply to the whole call.
Reasoning is a part of output: priced once, inside output. A price never changes in
place: a new version starts and the previous one ends (migration 0003 enforces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.db import connections
from django.utils import timezone

from chat.errors import PriceVersionRefused
from chat.models import ModelPrice
from chat.providers import Usage
from config.db import rls

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


def model_price_version_add(
    *, provider: str, model: str, fields: Mapping[str, object], effective_from: datetime | None = None
) -> ModelPrice:
    """A new price version of a model, in force from `effective_from` (now by default). The
    version open until then ends there; past versions keep their prices. PriceVersionRefused
    when it would not start after the open version. One writer per model at a time."""
    with rls.atomic():
        with connections[rls.current_alias()].cursor() as cursor:
            # Serializes versions of one model, even when no row exists yet to lock.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"chat_modelprice:{provider}/{model}"])
        at = effective_from or timezone.now()  # read under the lock: a writer that waited starts after the one before it
        open_versions = model_price_version_start_check(provider=provider, model=model, at=at, lock=True)
        for version in open_versions:
            version.effective_to = at
            version.save(update_fields=["effective_to"])
        return ModelPrice.objects.create(provider=provider, model=model, effective_from=at, effective_to=None, **fields)


def model_price_version_start_check(*, provider: str, model: str, at: datetime, lock: bool = False) -> list[ModelPrice]:
    """The model's open versions (normally one), which a version starting `at` ends;
    PriceVersionRefused unless it starts after each of them began."""
    versions = ModelPrice.objects.filter(provider=provider, model=model, effective_to__isnull=True)
    versions = list(versions.select_for_update() if lock else versions)
    for version in versions:
        if version.effective_from >= at:
            began = "is scheduled to begin" if version.effective_from > timezone.now() else "began"
            raise PriceVersionRefused(
                f"A new price for {provider}/{model} must start after {version.effective_from:%Y-%m-%d %H:%M} UTC, "
                f"when its latest price {began}.",
                {"field": "effective_from"},
            )
    return versions
