"""`manage.py prices_import FILE [--dry-run]`: new catalog price versions from LiteLLM's
public price map (`model_prices_and_context_window.json`).

Only models already in the catalog, of our providers (openai, anthropic, and gemini from
its `gemini` entries, else its `vertex_ai-language-models` ones), are read. A model gets a
new version, in force from now, only where a price differs; a price the file does not
state keeps the catalog's. The file's per-token USD prices are read as exact decimals
(2.5e-06 is 2.5 per million). All or nothing: a bad file writes nothing and exits non-zero.
A model whose next price staff scheduled for later is left as it is (and said so).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal, DecimalException
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat import pricing, selectors
from chat.errors import PriceVersionRefused
from chat.models import PRICE_FIELDS, ModelPrice
from config.db import rls

MILLION = Decimal(1_000_000)
PRICE_QUANTUM = Decimal("1E-6")  # the catalog keeps per-million prices to 6 places
# LiteLLM's per-token key: the token class it prices.
KEYS = {
    "input_cost_per_token": "input_uncached",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
}
# A long-context key: `<key>_above_<N>k_tokens`; service-tier suffixes (`_priority`, `_flex`) are not ours.
# ASCII digits (int() reads other scripts' too), unbounded here so _threshold refuses, rather than
# skips unread, one the catalog cannot hold.
TIER_KEY = re.compile(rf"^({'|'.join(KEYS)})_above_([0-9]+)k_tokens$")
# LiteLLM's provider name: (ours, preference when both name one model: lower wins).
PROVIDERS = {"openai": ("openai", 0), "anthropic": ("anthropic", 0), "gemini": ("gemini", 0), "vertex_ai-language-models": ("gemini", 1)}
CHAT_MODES = {None, "chat", "responses"}


class Command(BaseCommand):
    help = "Create catalog price versions from a LiteLLM model_prices_and_context_window.json file (--dry-run: print the differences only)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="path to model_prices_and_context_window.json")
        parser.add_argument("--dry-run", action="store_true", help="print the differences and write nothing")

    def handle(self, *args, file: str, dry_run: bool, **options):
        entries = _entries(_load(Path(file)))
        with rls.privileged(reason=f"prices_import {file}"):
            changes = []
            scheduled = _scheduled_starts()
            for current in selectors.model_price_list():
                entry = entries.get((current.provider, current.model))
                if (current.provider, current.model) in scheduled:
                    # Staff's price for later stands; a price from now would have to end it first.
                    at = scheduled[(current.provider, current.model)]
                    self.stdout.write(f"{current.provider}/{current.model}: skipped, staff scheduled a price from {at:%Y-%m-%d %H:%M} UTC.")
                elif entry is not None:
                    fields = _fields(entry, current)
                    differences = {
                        name: (getattr(current, name), fields[name]) for name in PRICE_FIELDS if getattr(current, name) != fields[name]
                    }
                    if differences:
                        changes.append((current, fields, differences))
            for current, _, differences in changes:
                said = ", ".join(f"{name} {_shown(old)} -> {_shown(new)}" for name, (old, new) in differences.items())
                self.stdout.write(f"{current.provider}/{current.model}: {said}")
            if dry_run:
                self.stdout.write(f"Dry run: {len(changes)} model(s) would get a new price version; nothing was written.")
                return
            for current, fields, _ in changes:
                try:
                    pricing.model_price_version_add(provider=current.provider, model=current.model, fields=fields)
                except PriceVersionRefused as refused:  # staff scheduled a price since the list was read
                    raise CommandError(f"{refused.message} Nothing was imported; run it again.") from None
        self.stdout.write(f"{len(changes)} new price version(s) in force from now.")


def _scheduled_starts() -> dict[tuple[str, str], datetime]:
    """(provider, model) -> the start of a version staff set to begin later."""
    later = ModelPrice.objects.filter(effective_from__gt=timezone.now(), effective_to__isnull=True)
    return {(provider, model): start for provider, model, start in later.values_list("provider", "model", "effective_from")}


def _load(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(), parse_float=Decimal)
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path} is not a JSON file: {exc}.") from exc
    except RecursionError:
        raise CommandError(f"{path} nests deeper than any price map does.") from None
    if not isinstance(document, dict) or not all(isinstance(entry, dict) for entry in document.values()):
        raise CommandError(f"{path} is not a LiteLLM price map: it must be one JSON object with an object per model.")
    return document


def _entries(document: dict) -> dict[tuple[str, str], dict]:
    """(our provider, model name) -> the file's entry, for chat models of our providers."""
    chosen: dict[tuple[str, str], tuple[int, dict]] = {}
    for key, entry in document.items():
        litellm_provider, mode = entry.get("litellm_provider"), entry.get("mode")
        if not isinstance(litellm_provider, str) or not isinstance(mode, str):
            continue  # not a chat model of ours, whatever else it is (a list there is not a name)
        provider = PROVIDERS.get(litellm_provider)
        if provider is None or mode not in CHAT_MODES:
            continue
        name = key.split("/", 1)[1] if key.startswith(("gemini/", "vertex_ai/", "anthropic/", "openai/")) else key
        ours, preference = provider
        if (ours, name) not in chosen or preference < chosen[(ours, name)][0]:
            chosen[(ours, name)] = (preference, {**entry, "_key": key})
    return {identity: entry for identity, (_, entry) in chosen.items()}


# The catalog's token counts (context window, long-context threshold) are integer columns.
TOKEN_COUNT_MAX = 2**31 - 1


def _token_count(entry: dict, key: str, value: int) -> int:
    if value > TOKEN_COUNT_MAX:
        raise CommandError(f"{entry['_key']}: {key} names {value:,} tokens, more than the catalog holds ({TOKEN_COUNT_MAX:,}).")
    return value


def _threshold(entry: dict, key: str, thousands: str) -> int:
    """The tokens a `_above_<N>k_tokens` key names: from 1k up to what the catalog holds."""
    digits = thousands.lstrip("0")
    if not digits:  # chat_modelprice_tier_needs_threshold: above 0
        raise CommandError(f"{entry['_key']}: {key} names a long-context threshold of 0 tokens; a tier needs one above 0.")
    if len(digits) > len(str(TOKEN_COUNT_MAX)):  # past this, int() may refuse the digits (4,300 at most) before the bound does
        raise CommandError(
            f"{entry['_key']}: {key[:60]}... names a {len(digits):,}-digit threshold, more tokens than the catalog holds ({TOKEN_COUNT_MAX:,})."
        )
    return _token_count(entry, key, int(digits) * 1000)


def _fields(entry: dict, current: ModelPrice) -> dict:
    """The new version's fields: the catalog's, with every price the file states."""
    fields = {field.name: getattr(current, field.name) for field in ModelPrice._meta.concrete_fields}
    for name in ("id", "provider", "model", "effective_from", "effective_to"):
        del fields[name]
    fields["is_active"] = True
    window = entry.get("max_input_tokens")
    if window is not None and (type(window) is not int or window <= 0):  # `true` is an int to isinstance
        raise CommandError(f"{entry['_key']}: max_input_tokens must be a whole number of tokens above 0, not {json.dumps(window)[:40]}.")
    if window is not None:
        fields["context_window"] = _token_count(entry, "max_input_tokens", window)
    thresholds = set()
    for key, value in entry.items():
        if key in KEYS:
            fields[pricing.CLASS_FIELDS[KEYS[key]][0]] = _per_million(entry, key, value)
        elif match := TIER_KEY.match(key):
            fields[pricing.CLASS_FIELDS[KEYS[match.group(1)]][1]] = _per_million(entry, key, value)
            thresholds.add(_threshold(entry, key, match.group(2)))
    if len(thresholds) > 1:
        raise CommandError(f"{entry['_key']} has several long-context thresholds ({sorted(thresholds)}); the catalog keeps one.")
    if thresholds:
        fields["long_context_threshold"] = thresholds.pop()
    if fields["long_context_threshold"] is not None and None in (fields["long_context_input_price"], fields["long_context_output_price"]):
        raise CommandError(f"{entry['_key']} has a long-context tier without both its input and output prices.")
    return fields


def _per_million(entry: dict, key: str, value) -> Decimal:
    try:
        number = Decimal(value) if not isinstance(value, bool) else None
        if number is None or not number.is_finite():
            raise ValueError(value)  # NaN, Infinity, true: no price
        price = number * MILLION
        fits = 0 <= price < Decimal("1E6") and price == price.quantize(PRICE_QUANTUM)
    except (DecimalException, TypeError, ValueError) as exc:  # DecimalException: 1e999999 overflows
        raise CommandError(f"{entry['_key']}: {key} is not a number ({str(value)[:40]!r}).") from exc
    if not fits:
        raise CommandError(f"{entry['_key']}: {key} = {value} does not fit the catalog (USD per million, 0 to 999999.999999, 6 decimals).")
    return price.quantize(PRICE_QUANTUM)


def _shown(value) -> str:
    return "none" if value is None else f"{value.normalize():f}" if isinstance(value, Decimal) else str(value)
