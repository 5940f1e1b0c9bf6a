"""What staff do to the model catalog in admin while calls are metered (an attacker's review,
2026-12-01): each test failed before its fix, for the bug its docstring names."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import make_user
from analytics.models import TokenUsage
from billing.tests.factories import plan_with_limits
from billing.tests.test_reservations import _member
from chat import pricing, selectors, services
from chat.models import Message, ModelPrice
from chat.tests.test_price_versions import _form
from chat.tests.test_send_race import worker_killed_mid_call
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client, catalog, plans):
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


def _echo_priced(input_price: str = "100", output_price: str = "100", start=None) -> ModelPrice:
    """A priced version of the offline echo model (the seeded one costs $0), in force from `start`."""
    with rls.privileged(reason="test"):
        version = pricing.model_price_version_add(
            provider="echo",
            model="echo-1",
            fields={"display_name": "Echo", "context_window": 1_000_000, "input_price": input_price, "output_price": output_price},
            effective_from=start or timezone.now() - timedelta(minutes=1),
        )
        return ModelPrice.objects.get(pk=version.pk)


def test_staff_cannot_delete_a_price_version(staff_client, catalog):
    """ModelPriceAdmin is a plain ModelAdmin: its delete view and the "delete selected" action
    erase a price version (a past one or the one in force), i.e. rewrite the catalog's history
    that every ledger row's price_id points at. Versions end or retire (is_active); never go."""
    price = catalog["gpt-4o-mini"]
    response = staff_client.post(reverse("admin:chat_modelprice_delete", args=[price.pk]), {"post": "yes"})
    with rls.privileged(reason="test"):
        still_there = ModelPrice.objects.filter(pk=price.pk).exists()
    assert response.status_code == 403 and still_there, (response.status_code, still_there)


def test_a_version_staff_delete_mid_call_does_not_make_the_call_free(catalog, plans, settings, client):
    """A call is checked and priced (its reply row keeps price_id); its worker dies. Staff delete
    that version in admin; the model now has no version in force, so streams_close_stale
    (chat/services.py:1043-1058) finds no price, sets the reply's cost to $0 and writes no
    ledger row at all: a model call that was made is never metered nor counted."""
    settings.CHAT_ECHO_DELAY = 0
    version = _echo_priced()
    user, org = _member(plan_with_limits("staff-deletes", monthly_tokens=10_000))
    message_id = worker_killed_mid_call(user)["message_id"]
    staff = make_user(email="staff2@example.com", role="staff", is_superuser=True)
    client.force_login(staff)
    client.post(reverse("admin:chat_modelprice_delete", args=[version.pk]), {"post": "yes"})
    with rls.privileged(reason="test: the worker died long ago"):
        Message.objects.filter(pk=message_id).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.streams_close_stale() == 1
    with rls.privileged(reason="test"):
        reply = Message.objects.get(pk=message_id)
        rows = list(TokenUsage.objects.filter(message_id=message_id))
    usage = services.Usage(input_uncached=reply.input_tokens, output=reply.output_tokens)
    expected = pricing.call_cost(usage=usage, price=version).cost
    assert reply.input_tokens > 0 and expected > 0
    assert len(rows) == 1 and rows[0].cost == expected, (reply.cost, [r.cost for r in rows], expected)


def test_a_price_change_cannot_start_before_calls_already_metered(staff_client, catalog, plans, settings):
    """The change form takes any start after the open version began, in the past too (the help
    text says "now, or a later time", nothing checks it). A call metered an hour ago at the
    version then in force is afterwards, by the catalog, a call at the new price: the catalog
    no longer tells what the ledger charged (and the old version's effective_to moves back)."""
    settings.CHAT_ECHO_DELAY = 0
    old = _echo_priced("1", "1", start=timezone.now() - timedelta(days=2))
    user, org = _member(plan_with_limits("retro", monthly_tokens=None))
    reply = services.message_send(user=user, content="metered at the old price")
    with rls.privileged(reason="test"):
        [row] = TokenUsage.objects.filter(message_id=reply.message.pk)
    called_at = row.created_at
    start = (called_at - timedelta(hours=1)).astimezone(timezone.get_current_timezone())
    response = staff_client.post(
        reverse("admin:chat_modelprice_change", args=[old.pk]),
        _form(old, input_price="50", effective_from_0=start.strftime("%Y-%m-%d"), effective_from_1=start.strftime("%H:%M:%S")),
    )
    with rls.privileged(reason="test"):
        at_call = selectors.model_price_current(provider="echo", model="echo-1", at=called_at)
    charged = pricing.call_cost(usage=services.Usage(input_uncached=row.input_tokens, output=row.output_tokens), price=old).cost
    assert at_call is not None and at_call.pk == old.pk and row.cost == charged, (response.status_code, at_call and at_call.input_price)
