"""Time and calendars across the apps (an attacker's review): month boundaries of the ledger, the
live counters and the reservations, Stripe trials ending, week/day/leap-day bounds, expiries in a
user's time zone. Real PostgreSQL and Redis; clocks frozen by patching django.utils.timezone.now
(Redis keeps its own clock for reservation deadlines, as in production)."""

import time
import zoneinfo
from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone

from accounts.tests.factories import make_user
from analytics import counters, selectors
from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.tests.conftest import fake_stripe, plans  # noqa: F401  (fixtures)
from billing.tests.factories import current_subscription, organization_of
from config.db import rls
from config.db.partitions import month_add

pytestmark = pytest.mark.django_db(transaction=True)


def _midnight_after_this_month() -> datetime:
    boundary = month_add(counters.month_of(), 1)
    return datetime(boundary.year, boundary.month, 1, tzinfo=UTC)


# --- 1. An expired reservation of last month rebuilds last month's counter, not this one's ---------


def test_a_reservation_from_last_month_expiring_rebuilds_the_counter_its_call_was_metered_in(settings, monkeypatch):
    """A plan of 10,000 tokens a month. At 23:59:59 on the month's last day a call is checked and
    reserves 9,000 in that month's hash. It finishes at 00:00:01: its ledger row commits in the NEW
    month (created_at is when it is metered), and its worker is killed before the Redis increment
    and the settlement (the case reservations_expire exists for: "their calls may or may not have
    been counted, so the counter is dropped and rebuilt"). The new month's counter was already
    built (a page, a check) at 0. reservations_expire releases the reservation and drops the
    counter of the reservation's month (last month), so the new month's counter stays at 0 while
    its ledger holds 9,000, and a second call of 9,000 is allowed: 18,000 on a plan of 10,000.
    The entitlement script's own release (expired reservations of last month) drops THIS month's
    counter; the task must do the same."""
    from billing.tests.factories import plan_with_limits
    from billing.tests.test_reservations import _check, _member, _record

    settings.ENTITLEMENT_RESERVATION_TIMEOUT = 1
    user, org = _member(plan_with_limits("boundary-expiry", monthly_tokens=10_000))
    midnight = _midnight_after_this_month()
    clock = [midnight - timedelta(seconds=1)]
    monkeypatch.setattr(timezone, "now", lambda: clock[0])

    first = _check(user, org, estimated_tokens=1_000, max_output_tokens=8_000)
    assert first.allowed and first.month == counters.month_of(midnight - timedelta(seconds=1))

    clock[0] = midnight + timedelta(seconds=1)
    new_month = counters.month_of()
    assert counters.counters_read(scope="org", owner_id=org.pk).total_tokens == 0  # the new month's counter, built
    with monkeypatch.context() as killed:  # committed, then the worker dies before its Redis round trip
        killed.setattr(counters, "counters_increment", lambda **kwargs: None)
        _record(user, org, input_tokens=9_000)

    time.sleep(1.2)  # past the reservation's deadline on Redis's clock
    assert billing_services.reservations_expire() == 1

    with rls.privileged(reason="test: the new month's ledger"):
        truth = counters.usage_from_database(scope="org", owner_id=org.pk, month=new_month)
    assert truth.total_tokens == 9_000
    live = counters.counters_read(scope="org", owner_id=org.pk)
    second = _check(user, org, estimated_tokens=1_000, max_output_tokens=8_000)
    if second.allowed:
        billing_services.reservation_settle(organization_id=org.pk, reservation=second.reservation, month=second.month)
    assert (live.total_tokens, second.allowed) == (9_000, False), (
        f"the new month's counter reads {live.total_tokens:,} with {truth.total_tokens:,} in its ledger; "
        f"a second call of 9,000 allowed: {second.allowed}"
    )


# --- 2. A trial Stripe runs is ended by Stripe, not by our clock -----------------------------------


def _deliver(client, evt: dict):
    from billing.tests.stripe_server import signed

    body, header = signed(evt)
    response = client.post("/billing/stripe/webhook", data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    assert response.status_code == 200, response.content
    from billing import stripe_services

    return stripe_services.stripe_event_process(event_id=evt["id"])


def test_a_stripe_trial_at_its_end_is_not_put_on_free_and_cut_from_stripe_by_the_period_task(client, fake_stripe):  # noqa: F811
    """Pro bought at Checkout with its 14-day trial (Stripe runs it: the card is charged when the
    trial ends and Stripe then sends customer.subscription.updated, status active; a failed charge
    makes it past_due, which has BILLING_GRACE_DAYS here). The trial ended two minutes ago and
    Stripe's update has not arrived or not been processed yet (a webhook backlog, our endpoint down
    for a deploy). The 5-minute period task treats the trial as ended by our clock: it ends the
    Stripe-billed row, puts the organization on Free and writes a row with no Stripe subscription
    id. The customer is being charged for Pro and has Free's limits and models; with the row no
    longer billed by Stripe, nothing stops the owner from starting a second Checkout for Pro (two
    Stripe subscriptions charging). A Stripe period end is left to Stripe (_advance renews only
    rows without a Stripe id); a Stripe trial's end should be too."""
    from billing.tests.stripe_server import event, subscription_object

    org = organization_of(make_user())
    trial_end = int(time.time()) - 120
    started = trial_end - 14 * 86400
    obj = subscription_object("sub_trial", price="price_pro_month", status="trialing", organization_id=org.pk, trial_end=trial_end)
    obj["items"]["data"][0].update(current_period_start=started, current_period_end=trial_end)  # a trial's period is the trial
    assert _deliver(client, event("customer.subscription.created", obj, created=started)) == "applied"
    before = current_subscription(org)
    assert (before.plan.slug, before.status, before.stripe_subscription_id) == ("pro", "trialing", "sub_trial")

    billing_services.subscription_periods_advance()

    after = current_subscription(org)
    in_force = billing_selectors.plan_in_force(subscription=after).slug
    assert (after.plan.slug, after.stripe_subscription_id, in_force) == ("pro", "sub_trial", "pro"), (
        f"two minutes after a Stripe trial's end, before Stripe's word: on {after.plan.slug} "
        f"(in force: {in_force}), Stripe subscription id {after.stripe_subscription_id!r}"
    )


# ===================================================================================================
# What held
# ===================================================================================================


def test_held_the_ledger_row_its_counter_and_its_rollup_agree_on_the_month_at_the_last_microsecond(monkeypatch):
    """The last microsecond of a month and the first of the next: the ledger row, the live counter
    key and the monthly rollup all put each call in the same UTC month, once."""
    from analytics.models import UsageRollup
    from analytics.services import usage_rollup
    from billing.tests.factories import plan_with_limits
    from billing.tests.test_reservations import _member, _record

    user, org = _member(plan_with_limits("edges", monthly_tokens=None))
    midnight = _midnight_after_this_month()
    before, after = counters.month_of(midnight - timedelta(microseconds=1)), counters.month_of(midnight)
    assert after == month_add(before, 1)
    for moment in (before, after):  # both counters built before the calls, so increments land on them
        counters.counters_read(scope="org", owner_id=org.pk, month=moment)
    clock = [midnight - timedelta(microseconds=1)]
    monkeypatch.setattr(timezone, "now", lambda: clock[0])
    _record(user, org, input_tokens=100)
    clock[0] = midnight
    _record(user, org, input_tokens=7)
    monkeypatch.undo()
    assert counters.counters_read(scope="org", owner_id=org.pk, month=before).total_tokens == 100
    assert counters.counters_read(scope="org", owner_id=org.pk, month=after).total_tokens == 7
    usage_rollup()
    with rls.privileged(reason="test: rollups"):
        months = dict(UsageRollup.objects.filter(organization_id=org.pk, period="month").values_list("period_start", "total_tokens"))
        days = dict(UsageRollup.objects.filter(organization_id=org.pk, period="day").values_list("period_start", "total_tokens"))
    assert months == {before: 100, after: 7}
    assert days == {(midnight - timedelta(days=1)).date(): 100, midnight.date(): 7}


@pytest.mark.parametrize(
    ("today", "period", "bounds"),
    [
        (date(2028, 2, 29), "month", (date(2028, 2, 1), date(2028, 2, 29))),
        (date(2028, 3, 1), "30d", (date(2028, 2, 1), date(2028, 3, 1))),
        (date(2026, 3, 29), "week", (date(2026, 3, 23), date(2026, 3, 29))),  # a Sunday, the day Paris loses an hour
        (date(2026, 3, 30), "week", (date(2026, 3, 30), date(2026, 3, 30))),  # the Monday after
        (date(2026, 11, 1), "day", (date(2026, 11, 1), date(2026, 11, 1))),  # New York's 25-hour day: a UTC day all the same
    ],
)
def test_held_period_bounds_on_leap_days_week_starts_and_dst_days(today, period, bounds):
    assert selectors.period_bounds(period=period, today=today) == bounds


def test_held_a_period_from_the_31st_of_january_in_a_leap_year_ends_on_the_29th():
    start = datetime(2028, 1, 31, 12, tzinfo=UTC)
    end = billing_selectors.period_end_for(start=start, interval="month")
    assert end == datetime(2028, 2, 29, 12, tzinfo=UTC)
    # A start given in a zone far from UTC is the same instant's period.
    far = start.astimezone(zoneinfo.ZoneInfo("Pacific/Kiritimati"))
    assert billing_selectors.period_end_for(start=far, interval="month") == end


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Paris"])
def test_held_an_api_key_expiry_day_ends_at_the_end_of_that_day_in_the_users_zone(zone):
    from accounts.forms import ApiKeyCreateForm

    day = date(2027, 3, 28)  # Paris moves to summer time that night
    form = ApiKeyCreateForm({"name": "k", "scopes": ["chat:read"], "expires_at": day.isoformat()}, user_timezone=zone)
    form.is_valid()
    expires = form.cleaned_data.get("expires_at")
    assert expires is not None
    local = expires.astimezone(zoneinfo.ZoneInfo(zone))
    assert (local.date(), local.hour, local.minute) == (day, 23, 59)


def test_held_a_monthly_limit_refusal_names_the_first_of_next_month_at_the_years_end(monkeypatch):
    last_second = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert billing_selectors.month_reset(last_second) == date(2027, 1, 1)
    assert billing_services._reset_words(last_second) == "1 January 2027"
    assert counters.counter_key("org", "x", counters.month_of(last_second + timedelta(seconds=1))).startswith("usage:v2:202701:")
