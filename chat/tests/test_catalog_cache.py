"""The catalog each process keeps (chat.selectors): a price saved here applies at once, one
saved by another process within CATALOG_SECONDS, and a version scheduled for later on time."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone

from chat import selectors
from chat.tests.factories import make_catalog, price_add
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _input_price(at=None) -> Decimal:
    with rls.atomic_as(None):
        return selectors.model_price_current(provider="echo", model="echo-cached", at=at).input_price


def test_a_version_saved_in_this_process_applies_at_once():
    make_catalog()
    price_add(provider="echo", model="echo-cached", input_price="1.00", output_price="1.00")
    assert _input_price() == Decimal("1.00")
    price_add(provider="echo", model="echo-cached", input_price="2.00", output_price="1.00")
    assert _input_price() == Decimal("2.00")


def test_a_version_written_elsewhere_applies_within_the_catalog_interval(monkeypatch):
    make_catalog()
    price_add(
        provider="echo", model="echo-cached", input_price="1.00", output_price="1.00", effective_from=timezone.now() - timedelta(hours=1)
    )
    assert _input_price() == Decimal("1.00")
    with connections["privileged"].cursor() as cur:  # another process adds a version: no signal reaches this one
        cur.execute(
            "INSERT INTO chat_modelprice (id, provider, model, display_name, context_window, input_price, output_price, "
            "effective_from, is_active) VALUES (gen_random_uuid(), 'echo', 'echo-cached', 'echo-cached', 0, 3, 1, now(), true)"
        )
    assert _input_price() == Decimal("1.00")
    later = selectors.time.monotonic() + selectors.CATALOG_SECONDS + 1
    monkeypatch.setattr(selectors.time, "monotonic", lambda: later)
    assert _input_price() == Decimal("3.00")


def test_a_version_scheduled_for_later_applies_on_time():
    make_catalog()
    now = timezone.now()
    price_add(provider="echo", model="echo-cached", input_price="1.00", output_price="1.00", effective_from=now - timedelta(days=1))
    price_add(provider="echo", model="echo-cached", input_price="5.00", output_price="1.00", effective_from=now + timedelta(hours=1))
    assert _input_price(at=now) == Decimal("1.00")
    assert _input_price(at=now + timedelta(hours=2)) == Decimal("5.00")
