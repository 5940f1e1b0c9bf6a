"""A price never changes in place: staff editing a price in admin add a version from now (or
a chosen time) and end the previous one; the database refuses an UPDATE of a price column."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import make_user
from chat import pricing, selectors
from chat.models import ModelPrice
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client, catalog, plans):
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


def _versions(model: str) -> list[ModelPrice]:
    with rls.privileged(reason="test"):
        return list(ModelPrice.objects.filter(model=model).order_by("effective_from"))


def _form(price: ModelPrice, **changes) -> dict:
    """The admin change form as a browser posts it, with `changes` applied."""
    data = {
        "display_name": price.display_name,
        "context_window": str(price.context_window),
        "effective_from_0": price.effective_from.strftime("%Y-%m-%d"),
        "effective_from_1": price.effective_from.strftime("%H:%M:%S"),
        # The start has a callable default, so the page carries its initial value in hidden fields.
        "initial-effective_from_0": price.effective_from.strftime("%Y-%m-%d"),
        "initial-effective_from_1": price.effective_from.strftime("%H:%M:%S"),
        "is_active": "on",
    }
    for name in ModelPrice._meta.get_fields():
        if name.name.endswith("_price") or name.name == "long_context_threshold":
            value = getattr(price, name.name)
            data[name.name] = "" if value is None else str(value)
    return {**data, **changes}


def _change(staff_client, price: ModelPrice, **changes):
    return staff_client.post(reverse("admin:chat_modelprice_change", args=[price.pk]), _form(price, **changes))


def test_editing_a_price_in_admin_adds_a_version_from_now_and_ends_the_old_one(staff_client, catalog):
    old = catalog["gpt-4o-mini"]
    before = timezone.now()
    response = _change(staff_client, old, input_price="0.20", cache_read_price="0.10")
    assert response.status_code == 302, response.context["adminform"].form.errors
    ended, new = _versions("gpt-4o-mini")
    assert ended.pk == old.pk and (ended.input_price, ended.cache_read_price) == (
        Decimal("0.15"),
        Decimal("0.075"),
    )  # the past keeps its prices
    assert ended.effective_to == new.effective_from and before <= new.effective_from <= timezone.now()
    assert (new.input_price, new.output_price, new.cache_read_price, new.effective_to) == (
        Decimal("0.2"),
        Decimal("0.6"),
        Decimal("0.1"),
        None,
    )
    with rls.privileged(reason="test"):
        assert selectors.model_price_current(provider="openai", model="gpt-4o-mini").pk == new.pk
        assert selectors.model_price_current(provider="openai", model="gpt-4o-mini", at=before).pk == old.pk


def test_a_new_price_can_start_at_a_chosen_time(staff_client, catalog):
    old = catalog["claude-haiku-4-5"]
    start = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    changes = {"output_price": "6.00", "effective_from_0": start.strftime("%Y-%m-%d"), "effective_from_1": start.strftime("%H:%M:%S")}
    assert _change(staff_client, old, **changes).status_code == 302
    ended, new = _versions("claude-haiku-4-5")
    assert ended.effective_to == new.effective_from == start
    with rls.privileged(reason="test"):
        assert selectors.model_price_current(provider="anthropic", model="claude-haiku-4-5").pk == old.pk  # until then
        assert selectors.model_price_current(provider="anthropic", model="claude-haiku-4-5", at=start).output_price == Decimal("6")


def test_a_start_before_the_price_in_force_or_an_ended_version_is_a_form_error(staff_client, catalog):
    old = catalog["gpt-4o"]
    response = _change(staff_client, old, input_price="3.00", effective_from_0="2026-10-01")  # before it, and before now
    assert response.status_code == 200 and "A new price starts now or later" in response.content.decode()
    assert [v.pk for v in _versions("gpt-4o")] == [old.pk]
    assert _change(staff_client, old, input_price="3.00").status_code == 302
    response = _change(staff_client, old, input_price="4.00")  # the version just ended
    assert response.status_code == 200 and "This version has ended" in response.content.decode()
    assert len(_versions("gpt-4o")) == 2


def test_display_fields_change_in_place_and_a_start_does_not_move(staff_client, catalog):
    old = catalog["o3"]
    assert _change(staff_client, old, display_name="OpenAI o3", context_window="250000").status_code == 302
    [same] = _versions("o3")
    assert (same.pk, same.display_name, same.context_window, same.effective_to) == (old.pk, "OpenAI o3", 250000, None)
    response = _change(staff_client, old, display_name="OpenAI o3", effective_from_0="2026-11-02")
    assert response.status_code == 200 and "start does not move" in response.content.decode()


@pytest.mark.parametrize(
    "changes, sentence",
    [
        ({"cache_read_price": "-0.1"}, "Prices cannot be negative."),
        ({"long_context_input_price": "6"}, "A long-context tier needs its threshold"),
        ({"long_context_threshold": "200000"}, "A long-context tier needs its threshold"),
    ],
)
def test_a_price_the_catalog_cannot_hold_is_a_form_error_not_a_500(staff_client, catalog, changes, sentence):
    response = _change(staff_client, catalog["claude-haiku-4-5"], **changes)
    assert response.status_code == 200 and sentence in response.content.decode()
    assert len(_versions("claude-haiku-4-5")) == 1


def test_adding_a_version_in_admin_ends_the_open_one(staff_client, catalog):
    now = timezone.now()  # a start the admin's "Now" gives
    form = _form(catalog["gemini-2.0-flash"], input_price="0.12", effective_from_0=f"{now:%Y-%m-%d}", effective_from_1=f"{now:%H:%M:%S}")
    response = staff_client.post(reverse("admin:chat_modelprice_add"), {**form, "provider": "gemini", "model": "gemini-2.0-flash"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    ended, new = _versions("gemini-2.0-flash")
    assert ended.effective_to == new.effective_from and new.input_price == Decimal("0.12") and new.cache_read_price == Decimal("0.025")


def test_the_database_refuses_an_in_place_price_update(catalog):
    price = catalog["gpt-5"]
    for column, value in [
        ("input_price", "2"),
        ("cache_read_price", "0.2"),
        ("long_context_threshold", "100"),
        ("effective_from", "2026-01-01"),
    ]:
        with pytest.raises(IntegrityError, match="never changes in place"), rls.privileged(reason="test"):
            with connections["privileged"].cursor() as cur:
                cur.execute(f"UPDATE chat_modelprice SET {column} = %s WHERE id = %s", [value, price.pk])
    # Ending a version, retiring it and its display fields are not price changes.
    with rls.privileged(reason="test"), connections["privileged"].cursor() as cur:
        cur.execute(
            "UPDATE chat_modelprice SET effective_to = now(), is_active = false, display_name = 'GPT-5 (old)' WHERE id = %s", [price.pk]
        )
        assert cur.rowcount == 1
    [row] = _versions("gpt-5")
    assert (row.input_price, row.is_active, row.display_name) == (Decimal("1.25"), False, "GPT-5 (old)")


def test_the_catalog_refuses_negative_prices_and_a_tier_without_its_threshold(catalog):
    price = catalog["gpt-5"]
    base = {"provider": "openai", "model": "gpt-5", "display_name": "x", "input_price": 1, "output_price": 1}
    for fields in [{"cache_read_price": -1}, {"long_context_input_price": 2}, {"long_context_threshold": 1000}]:
        with pytest.raises(IntegrityError), rls.privileged(reason="test"):
            ModelPrice.objects.create(**base, effective_from=price.effective_from + timedelta(days=1), **fields)


def test_concurrent_versions_of_one_model_chain_one_after_another(catalog):
    # Both writers start while the version in force is locked, so both read it before either ends it.
    seeded = catalog["gpt-4.1"]
    errors = []

    def add(input_price: str):
        try:
            with rls.privileged(reason="test"):
                pricing.model_price_version_add(
                    provider="openai", model="gpt-4.1", fields={"display_name": "GPT-4.1", "input_price": input_price, "output_price": "8"}
                )
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=add, args=(price,)) for price in ("2.10", "2.20")]
    with transaction.atomic(using="privileged"), connections["privileged"].cursor() as cur:
        cur.execute("SELECT 1 FROM chat_modelprice WHERE id = %s FOR UPDATE", [seeded.pk])
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while True:
            cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cur.fetchone()[0] >= 2:
                break
            assert time.monotonic() < deadline, "the two writers never both waited"
            time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert not errors, errors
    versions = _versions("gpt-4.1")
    assert [v.effective_to is None for v in versions] == [False, False, True]  # one version open
    assert all(earlier.effective_to == later.effective_from for earlier, later in zip(versions, versions[1:]))


def test_migration_0003_reverses_and_applies_again(catalog):
    leaf = [key for key in MigrationExecutor(connections["owner"]).loader.graph.leaf_nodes() if key[0] == "chat"]
    MigrationExecutor(connections["owner"]).migrate([("chat", "0002_seed_model_catalog")])
    try:
        with connections["owner"].cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'chat_modelprice' AND column_name LIKE 'cache%%'"
            )
            assert cur.fetchone()[0] == 0
            cur.execute("UPDATE chat_modelprice SET input_price = 1.5 WHERE model = 'gpt-5'")  # no trigger before 0003
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaf)
    [gpt5] = _versions("gpt-5")
    assert (gpt5.input_price, gpt5.cache_read_price) == (Decimal("1.5"), Decimal("0.125"))  # filled again
    with pytest.raises(IntegrityError, match="never changes in place"), connections["owner"].cursor() as cur:
        cur.execute("UPDATE chat_modelprice SET input_price = 2 WHERE model = 'gpt-5'")


def _with_another_writer_after_the_check(monkeypatch, price: ModelPrice, start=None):
    """The form is checked; then another writer (staff elsewhere, prices_import) adds a version."""
    from chat import admin as chat_admin

    real_clean = chat_admin.ModelPriceForm.clean

    def clean_then_another_writer(form):
        cleaned = real_clean(form)
        with rls.privileged(reason="test: a concurrent writer"):
            fields = {"display_name": price.display_name, "input_price": Decimal("0.20"), "output_price": price.output_price}
            pricing.model_price_version_add(provider=price.provider, model=price.model, fields=fields, effective_from=start)
        return cleaned

    monkeypatch.setattr(chat_admin.ModelPriceForm, "clean", clean_then_another_writer)


def test_a_price_from_now_saved_after_another_writers_version_ends_that_version(staff_client, catalog, monkeypatch):
    """Staff change a price, start left as is (now); another version is added between the form's
    check and its save. Was: the start was fixed at the check, before the other version's, and the
    save was refused: a 500. Should: now is read under the service's lock: the other version ends
    where this one starts."""
    price = catalog["gpt-4o-mini"]
    _with_another_writer_after_the_check(monkeypatch, price)
    response = _change(staff_client, price, input_price="0.30")
    assert response.status_code == 302
    first, other, mine = _versions("gpt-4o-mini")
    assert (other.input_price, mine.input_price) == (Decimal("0.20"), Decimal("0.30"))
    assert first.effective_to == other.effective_from < other.effective_to == mine.effective_from and mine.effective_to is None


def test_a_chosen_start_that_another_writers_later_version_precedes_is_an_error_message_not_a_500(staff_client, catalog, monkeypatch):
    """Staff give a start in an hour; between the form's check and its save another writer adds a
    version starting in two. Was: PriceVersionRefused from the save: a 500. Should: the page comes
    back with the sentence, and nothing of this edit is written."""
    price = catalog["gpt-4o-mini"]
    _with_another_writer_after_the_check(monkeypatch, price, start=timezone.now() + timedelta(hours=2))
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    response = _change(staff_client, price, input_price="0.30", effective_from_0=f"{start:%Y-%m-%d}", effective_from_1=f"{start:%H:%M:%S}")
    assert response.status_code == 302 and response.url == reverse("admin:chat_modelprice_change", args=[price.pk])
    page = staff_client.get(response.url).content.decode()
    assert "A new price for openai/gpt-4o-mini must start after" in page and "when its latest price is scheduled to begin" in page
    # (The other writer ran inside the page's transaction here, so it is rolled back with it.)
    assert Decimal("0.30") not in [v.input_price for v in _versions("gpt-4o-mini")]
