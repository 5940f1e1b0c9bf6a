"""`manage.py prices_import`: LiteLLM's price map (a small file with its real keys) into new catalog versions."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from chat import pricing, selectors
from chat.models import ModelPrice
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURE = Path(__file__).parent / "litellm_prices.json"
# What the fixture changes against the seeded catalog; everything else in it is equal, ignored or not ours.
DIFFERENCES = [
    "openai/gpt-5: input_price 1.25 -> 1.5",
    "anthropic/claude-haiku-4-5: cache_write_1h_price 2 -> 2.5",
    "gemini/gemini-2.0-flash: input_price 0.1 -> 0.15",
]


def _import(path: Path, *args: str) -> str:
    out = StringIO()
    call_command("prices_import", str(path), *args, stdout=out)
    return out.getvalue()


def _rows() -> list[tuple]:
    with rls.privileged(reason="test"):
        return list(ModelPrice.objects.order_by("pk").values_list())


def _versions() -> dict[str, list[ModelPrice]]:
    with rls.privileged(reason="test"):
        versions: dict[str, list[ModelPrice]] = {}
        for price in ModelPrice.objects.order_by("effective_from"):
            versions.setdefault(price.model, []).append(price)
        return versions


def test_dry_run_prints_the_differences_and_writes_nothing(catalog):
    before = _rows()
    out = _import(FIXTURE, "--dry-run")
    assert sorted(out.splitlines()[:-1]) == sorted(DIFFERENCES)  # 1.1e-06 is exactly 1.10 per million: o4-mini is unchanged
    assert out.splitlines()[-1] == "Dry run: 3 model(s) would get a new price version; nothing was written."
    assert _rows() == before


def test_import_adds_versions_only_where_a_price_differs(catalog):
    out = _import(FIXTURE)
    assert out.splitlines()[-1] == "3 new price version(s) in force from now."
    versions = _versions()
    assert {model for model, rows in versions.items() if len(rows) == 2} == {"gpt-5", "claude-haiku-4-5", "gemini-2.0-flash"}
    old, new = versions["gpt-5"]
    assert old.effective_to == new.effective_from and (old.input_price, new.input_price) == (Decimal("1.25"), Decimal("1.5"))
    assert (new.cache_read_price, new.cache_write_5m_price, new.output_price) == (
        Decimal("0.125"),
        Decimal("1.25"),
        Decimal("10"),
    )  # unstated: kept
    haiku = versions["claude-haiku-4-5"][1]
    assert (haiku.cache_write_5m_price, haiku.cache_write_1h_price) == (Decimal("1.25"), Decimal("2.5"))
    with rls.privileged(reason="test"):
        pro = selectors.model_price_current(provider="gemini", model="gemini-2.5-pro")
    assert pro.input_price == Decimal("1.25")  # the Gemini API's entry, not Vertex's
    assert _import(FIXTURE).splitlines() == ["0 new price version(s) in force from now."]  # run twice: nothing more


def test_a_tier_in_the_file_becomes_the_versions_tier(catalog, tmp_path):
    document = json.loads(FIXTURE.read_text())
    document["gemini/gemini-2.5-flash"] |= {
        "input_cost_per_token_above_128k_tokens": 6e-07,
        "output_cost_per_token_above_128k_tokens": 5e-06,
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(document))
    _import(path)
    with rls.privileged(reason="test"):
        flash = selectors.model_price_current(provider="gemini", model="gemini-2.5-flash")
    tier = (flash.long_context_threshold, flash.long_context_input_price, flash.long_context_output_price)
    assert tier == (128_000, Decimal("0.6"), Decimal("5"))


@pytest.mark.parametrize(
    "content, sentence",
    [
        ("{not json", "is not a JSON file"),
        ("[1, 2]", "is not a LiteLLM price map"),
        (
            '{"gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": "cheap"}}',
            "gpt-4o: input_cost_per_token is not a number",
        ),
        ('{"gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": -1e-06}}', "does not fit the catalog"),
        ('{"gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token_above_200k_tokens": 5e-06}}', "without both"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nests deeper than any price map"),
    ],
)
def test_a_bad_file_is_refused_with_a_sentence_and_writes_nothing(catalog, tmp_path, content, sentence):
    path = tmp_path / "prices.json"
    path.write_text(content)
    before = _rows()
    with pytest.raises(CommandError, match=sentence):
        _import(path)
    assert _rows() == before


def test_a_missing_file_is_refused_with_a_sentence(tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        _import(tmp_path / "absent.json")


def test_a_model_whose_next_price_staff_scheduled_is_skipped_and_said_the_rest_imported(catalog):
    """Staff schedule gpt-5's next price for next week; the file's gpt-5 price differs from the one
    in force. Was: a price from now could not start before the scheduled one (PriceVersionRefused),
    the command died with a traceback and every other model's update was rolled back. Should:
    gpt-5 keeps staff's schedule, the output says so, and the other models are imported."""
    current = catalog["gpt-5"]
    later = timezone.now() + timedelta(days=7)
    with rls.privileged(reason="test: staff schedule a price"):
        fields = {"display_name": current.display_name, "input_price": Decimal("1.00"), "output_price": current.output_price}
        pricing.model_price_version_add(provider="openai", model="gpt-5", fields=fields, effective_from=later)
    lines = _import(FIXTURE).splitlines()
    assert lines[0] == f"openai/gpt-5: skipped, staff scheduled a price from {later:%Y-%m-%d %H:%M} UTC."
    assert lines[-1] == "2 new price version(s) in force from now."
    versions = _versions()
    assert [v.input_price for v in versions["gpt-5"]] == [Decimal("1.25"), Decimal("1.00")]
    assert len(versions["claude-haiku-4-5"]) == len(versions["gemini-2.0-flash"]) == 2


def test_a_price_scheduled_while_the_import_runs_ends_it_with_a_sentence_and_writes_nothing(catalog, monkeypatch):
    """Staff schedule a price between the command's reading of the catalog and its write: the
    write is refused (a price from now cannot start before it), as a sentence, all or nothing."""
    from chat.management.commands import prices_import

    real = prices_import._scheduled_starts

    def then_staff_schedule():
        starts = real()
        with rls.privileged(reason="test: staff schedule a price meanwhile"):
            current = catalog["gemini-2.0-flash"]
            fields = {"display_name": current.display_name, "input_price": Decimal("0.2"), "output_price": current.output_price}
            pricing.model_price_version_add(
                provider="gemini", model="gemini-2.0-flash", fields=fields, effective_from=timezone.now() + timedelta(days=1)
            )
        return starts

    monkeypatch.setattr(prices_import, "_scheduled_starts", then_staff_schedule)
    with pytest.raises(
        CommandError,
        match=r"^A new price for gemini/gemini-2\.0-flash must start after .* when its latest price is scheduled to begin\. Nothing was imported; run it again\.$",
    ):
        _import(FIXTURE)
    versions = _versions()
    assert len(versions["gpt-5"]) == len(versions["claude-haiku-4-5"]) == 1
