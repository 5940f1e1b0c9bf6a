"""Billing's periodic tasks racing live changes (an attacker's review, 2026-12-01): the period task
decides on the row it locked; a call in flight at the month's end holds in the new month; a live
stream keeps its reservation. Real PostgreSQL and Redis; races ordered through the lock table."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.db import connections
from django.utils import timezone

from accounts.tests.factories import make_user
from billing import services
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls
from config.tests.races import on_a_thread, until, waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def org(plans):
    return organization_of(make_user())


def _raw_privileged():
    params = connections["privileged"].get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold"):
        params.pop(key, None)
    return psycopg.connect(**params)


def test_the_period_task_does_not_replace_a_plan_bought_while_it_waited_for_the_lock(org, plans):
    """Pro (granted by staff, no Stripe) was cancelled at its period's end, and the period has
    ended. The owner buys Enterprise at that moment: the checkout's plan change
    (subscription_plan_set's own steps: lock the current row, cancel it, insert the new one) is
    mid-way when the periodic task runs. The task read the Pro row before the change committed
    and decided "free"; it then waits on the row lock, and once the change commits, lock_current
    hands it the NEW Enterprise row, which the task replaces with Free. The organization has just
    paid for Enterprise and is on Free. What the task decided was about the Pro row; the row it
    locked is a different one, whose own plan in force is Enterprise."""
    put_on_plan(org, plans["pro"], current_period_end=timezone.now() - timedelta(minutes=1), cancel_at_period_end=True)

    other = _raw_privileged()
    with other.cursor() as cur:  # the checkout's plan change, not committed yet
        cur.execute("SELECT id FROM billing_subscription WHERE organization_id = %s AND status = 'active' FOR UPDATE", [org.pk])
        cur.execute("UPDATE billing_subscription SET status = 'canceled', ended_at = now() WHERE organization_id = %s", [org.pk])
        cur.execute(
            "INSERT INTO billing_subscription (id, organization_id, plan_id, interval, status, current_period_start,"
            " current_period_end, cancel_at_period_end, scheduled_interval, stripe_customer_id, stripe_subscription_id,"
            " created_at, updated_at)"
            " VALUES (gen_random_uuid(), %s, %s, 'month', 'active', now(), now() + interval '1 month', false, '', '', '',"
            " now(), now())",
            [org.pk, plans["enterprise"].pk],
        )
    _advance_while_held(other)
    assert current_subscription(org).plan.slug == "enterprise"


def _advance_while_held(other) -> None:
    """Run the period task until it waits on `other`'s row lock; then commit `other` and let it finish."""
    errors, before = [], waiting_locks()
    task = on_a_thread(services.subscription_periods_advance, errors)
    until(lambda: waiting_locks() > before, "the periodic task waits on the other transaction's row lock")
    other.commit()
    other.close()
    task.join(timeout=30)
    assert not task.is_alive() and errors == []


def test_the_period_task_decides_on_the_row_as_changed_while_it_waited(org, plans):
    """The same row, changed while the task waited for it: staff gave Pro (cancelled at its
    period's end, which has passed) another month. Decided on the row as it was read before the
    lock, the task would have put the organization on Free."""
    put_on_plan(org, plans["pro"], current_period_end=timezone.now() - timedelta(minutes=1), cancel_at_period_end=True)
    other = _raw_privileged()
    with other.cursor() as cur:
        cur.execute("SELECT id FROM billing_subscription WHERE organization_id = %s AND status = 'active' FOR UPDATE", [org.pk])
        cur.execute(
            "UPDATE billing_subscription SET current_period_end = now() + interval '1 month', cancel_at_period_end = false"
            " WHERE organization_id = %s AND status = 'active'",
            [org.pk],
        )
    _advance_while_held(other)
    current = current_subscription(org)
    assert (current.plan.slug, current.cancel_at_period_end) == ("pro", False)


# --- a call reserved in one month and metered in the next ------------------------------


def test_a_call_reserved_before_midnight_and_metered_after_counts_against_the_new_months_limit(catalog, monkeypatch, settings):
    """A plan of one message a month. At 23:59:59 on the last day of a month a reply starts
    streaming: its reservation is held in that month's budget (the check's month). At 00:00:01
    a second message is checked: the new month's counter and its held reservations are empty,
    so it is allowed, although the reply still streaming will be metered now, in the new month
    (its ledger row's created_at is when it finishes). Both end metered in the new month: two
    messages against a limit of one. Whatever month a call is metered in, the check for that
    month must have counted it (or it must be metered in the month it reserved in)."""
    from analytics import counters
    from billing.tests.factories import plan_with_limits
    from billing.tests.test_reservations import _member
    from chat import services as chat_services
    from chat.tests.test_pending_calls import _finish
    from config.db.partitions import month_add
    from config.errors import QuotaExceeded

    settings.CHAT_ECHO_DELAY = 0
    user, org = _member(plan_with_limits("one-a-month", monthly_messages=1))
    boundary = month_add(counters.month_of(), 1)
    midnight = datetime(boundary.year, boundary.month, 1, tzinfo=UTC)
    clock = [midnight - timedelta(seconds=1)]
    monkeypatch.setattr(timezone, "now", lambda: clock[0])

    streaming = chat_services.message_prepare(user=user, content="the last message of the month")
    clock[0] = midnight + timedelta(seconds=1)
    try:
        chat_services.message_send(user=user, content="the first message of the new month")
    except QuotaExceeded:
        pass  # refused: the reply in flight counts against the new month
    _finish(streaming)

    with rls.privileged(reason="test: the new month's usage"):
        metered = counters.usage_from_database(scope="org", owner_id=org.pk, month=boundary)
    assert metered.calls <= 1, f"{metered.calls} messages metered in {boundary:%B %Y} on a plan of 1 a month"


# --- a live stream's reservation released by reservations_expire ------------------------


def test_the_expiry_task_does_not_release_the_reservation_of_a_stream_still_alive(catalog, settings, monkeypatch):
    """A slow reader keeps a reply streaming past ENTITLEMENT_RESERVATION_TIMEOUT (15 minutes by
    default; the stale-stream pass leaves such a stream alone because its worker marks it alive,
    chat/tests/test_attack_streams.py). reservations_expire_task releases its reservation anyway,
    by deadline alone: the budget the live reply still holds is free again, a second send is
    allowed on it, and the live reply is metered on top when it ends. Here the timeout is 1 s
    (the 15 minutes); the stream has delivered a word and is marked alive. Each beat of the stream
    now moves its reservation's deadline on."""
    import asyncio
    import time

    from asgiref.sync import async_to_sync

    from billing.services import reservations_expire
    from billing.tests.factories import plan_with_limits
    from billing.tests.test_reservations import _check, _member, _open
    from chat import services as chat_services

    settings.CHAT_ECHO_DELAY = 0
    settings.ENTITLEMENT_RESERVATION_TIMEOUT = 1
    monkeypatch.setattr(chat_services, "STREAM_HEARTBEAT_SECONDS", 0.1)  # beats well within the timeout, as 30 s in 15 minutes
    limit = 8_000  # room for the stream's hold (its prompt and 4,096 out), not for a second one beside it
    user, org = _member(plan_with_limits("long-stream", monthly_tokens=limit))
    pending = chat_services.message_prepare(user=user, content="a reply a slow reader takes its time over")
    held_by_stream = _open(org)["tokens"]
    assert 4_096 < held_by_stream and held_by_stream + 4_096 > limit

    async def run():
        events = chat_services.message_stream(pending=pending)
        first = await events.__anext__()  # streaming, marked alive by its heartbeat

        def the_reader_is_slow():
            time.sleep(1.5)  # past the reservation's deadline, the stream still open
            expired = reservations_expire()  # the beat's task
            second = _check(user, org, estimated_tokens=0, max_output_tokens=4_096)
            connections.close_all()
            return expired, second

        expired, second = await asyncio.get_running_loop().run_in_executor(None, the_reader_is_slow)
        rest = [event async for event in events]
        await chat_services.stream_endings_wait()
        return first, expired, second, rest

    first, expired, second, rest = async_to_sync(run)()
    assert first["type"] == "delta" and rest[-1]["type"] == "done"
    if second.allowed:
        from billing.services import reservation_settle

        reservation_settle(organization_id=org.pk, reservation=second.reservation, month=second.month)
    # (reservations released by the task, second send allowed): the live stream's hold must stand
    assert (expired, second.allowed) == (0, False)
