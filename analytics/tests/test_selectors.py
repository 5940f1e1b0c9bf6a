"""Usage reads: every figure equals the ledger to the token and the cent, read from the
rollups under the user's own context; usage by member is for owners and admins only."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction

from analytics import selectors
from analytics.errors import UsageAccessDenied, UsageQueryInvalid
from analytics.models import ApiLog
from analytics.tests.usage_data import ledger, ledger_totals, month_start, totals_of, usage_world
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world():
    return usage_world()


def as_user(user, read):
    """Run a read the way a request does: in a transaction with the user's context."""
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        return read()


@pytest.mark.parametrize("period", selectors.PERIODS)
def test_summary_equals_the_ledger_for_each_period(world, period):
    for user in (world.alice, world.bob, world.carol):
        summary = as_user(user, lambda: selectors.usage_summary(user=user, period=period))
        start, end = selectors.period_bounds(period=period)
        assert (summary["period"], summary["period_start"], summary["period_end"]) == (period, start, end)
        expected = ledger_totals(where="user_id = %s AND day BETWEEN %s AND %s", params=[user.pk, start, end])
        assert totals_of(summary) == totals_of(expected), user.email
        assert isinstance(summary["cost"], Decimal) and summary["cost"].as_tuple().exponent == -10  # exact to 1e-10 USD


def test_period_bounds():
    today = selectors.usage_today()
    assert selectors.period_bounds(period="day") == (today, today)
    week_start, _ = selectors.period_bounds(period="week")
    assert week_start.weekday() == 0 and 0 <= (today - week_start).days < 7
    assert selectors.period_bounds(period="month") == (today.replace(day=1), today)
    assert selectors.period_bounds(period="30d") == (today - timedelta(days=29), today)
    with pytest.raises(UsageQueryInvalid, match="Unknown period"):
        selectors.period_bounds(period="year")


@pytest.mark.parametrize("group_by", ["model", "provider"])
def test_daily_by_model_and_provider_equal_the_ledger(world, group_by):
    today = selectors.usage_today()
    start = today - timedelta(days=40)
    rows = as_user(world.alice, lambda: selectors.usage_daily(user=world.alice, start=start, end=today, group_by=group_by))
    expected = ledger(where="user_id = %s AND day BETWEEN %s AND %s", params=[world.alice.pk, start, today], group_by=f"day, {group_by}")
    assert [(r["date"], r["key"], totals_of(r)) for r in rows] == [(e["day"], e[group_by], totals_of(e)) for e in expected]
    assert all(r["label"] == r["key"] for r in rows)
    assert "bob-only-model" not in {r["key"] for r in rows}  # Bob's rows share Acme with Alice, not her usage


def test_daily_in_one_organization(world):
    today = selectors.usage_today()
    rows = as_user(
        world.alice,
        lambda: selectors.usage_daily(
            user=world.alice, start=today - timedelta(days=20), end=today, group_by="model", organization_id=world.acme.pk
        ),
    )
    assert {r["key"] for r in rows} == {"gpt-4o-mini"}


def test_daily_by_member_for_an_organization_admin_equals_the_ledger(world):
    today = selectors.usage_today()
    start = today - timedelta(days=40)
    for admin in (world.alice, world.carol):
        rows = as_user(
            admin, lambda: selectors.usage_daily(user=admin, start=start, end=today, group_by="user", organization_id=world.acme.pk)
        )
        expected = ledger(
            where="organization_id = %s AND day BETWEEN %s AND %s", params=[world.acme.pk, start, today], group_by="day, user_id"
        )
        assert [(r["date"], r["key"], totals_of(r)) for r in rows] == [(e["day"], str(e["user_id"]), totals_of(e)) for e in expected]
        assert {r["label"] for r in rows} == {"Alice", "Bob"}
    # Without an organization: every shared organization Alice administers (Acme and Beta; Beta is idle).
    everything = as_user(world.alice, lambda: selectors.usage_daily(user=world.alice, start=start, end=today, group_by="user"))
    assert {r["key"] for r in everything} == {str(world.alice.pk), str(world.bob.pk)}
    assert (
        sum(r["calls"] for r in everything)
        == ledger_totals(where="organization_id = %s AND day >= %s", params=[world.acme.pk, start])["calls"]
    )


def test_daily_by_member_is_refused_to_plain_members(world):
    today = selectors.usage_today()
    with pytest.raises(UsageAccessDenied, match="owners and admins"):
        as_user(
            world.bob, lambda: selectors.usage_daily(user=world.bob, start=today, end=today, group_by="user", organization_id=world.acme.pk)
        )
    with pytest.raises(UsageAccessDenied, match="you administer none"):
        as_user(world.bob, lambda: selectors.usage_daily(user=world.bob, start=today, end=today, group_by="user"))
    # A personal workspace is not "by member": its usage is the owner's own.
    with pytest.raises(UsageAccessDenied):
        as_user(
            world.bob,
            lambda: selectors.usage_daily(user=world.bob, start=today, end=today, group_by="user", organization_id=world.bob_personal),
        )


def test_daily_refuses_bad_ranges_and_groupings(world):
    today = selectors.usage_today()
    cases = [
        (dict(start=today, end=today - timedelta(days=1), group_by="model"), "on or before"),
        (dict(start=today - timedelta(days=366), end=today, group_by="model"), "at most 366 days"),
        (dict(start=today, end=today, group_by="day"), "Unknown grouping"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageQueryInvalid, match=message):
            as_user(world.alice, lambda: selectors.usage_daily(user=world.alice, **kwargs))
    # 366 days, both ends included, is the most.
    assert as_user(
        world.alice, lambda: selectors.usage_daily(user=world.alice, start=today - timedelta(days=365), end=today, group_by="model")
    )


def test_usage_by_model_equals_the_ledger(world):
    month = month_start(selectors.usage_today())
    for user in (world.alice, world.bob):
        rows = as_user(user, lambda: selectors.usage_by_model(user=user, month=month))
        expected = ledger(where="user_id = %s AND date_trunc('month', day) = %s", params=[user.pk, month], group_by="provider, model")
        assert sorted((r["provider"], r["model"], tuple(totals_of(r).items())) for r in rows) == sorted(
            (e["provider"], e["model"], tuple(totals_of(e).items())) for e in expected
        )
        assert [r["cost"] for r in rows] == sorted((r["cost"] for r in rows), reverse=True)


def test_usage_by_member_lists_every_member_for_admins_only(world):
    month = month_start(selectors.usage_today())
    rows = as_user(world.carol, lambda: selectors.usage_by_member(user=world.carol, organization_id=world.acme.pk, month=month))
    expected = {
        e["user_id"]: totals_of(e)
        for e in ledger(where="organization_id = %s AND date_trunc('month', day) = %s", params=[world.acme.pk, month], group_by="user_id")
    }
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"Alice", "Bob", "Carol"}
    for name, user in (("Alice", world.alice), ("Bob", world.bob)):
        assert totals_of(by_name[name]) == expected.get(user.pk, totals_of(by_name["Carol"]))
    assert totals_of(by_name["Carol"]) == {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "calls": 0,
        "errors": 0,
        "cost": Decimal("0.000000"),
    }
    assert [r["cost"] for r in rows] == sorted((r["cost"] for r in rows), reverse=True)
    with pytest.raises(UsageAccessDenied):
        as_user(world.bob, lambda: selectors.usage_by_member(user=world.bob, organization_id=world.acme.pk, month=month))


def test_a_former_member_keeps_their_usage_in_the_organization(world):
    from accounts import services as accounts_services
    from accounts.models import Membership

    with rls.privileged(reason="test: Bob leaves Acme"):
        accounts_services.organization_leave(
            user=world.bob, organization=Membership.objects.get(user=world.bob, organization=world.acme).organization
        )
    month = month_start(selectors.usage_today())
    rows = as_user(world.alice, lambda: selectors.usage_by_member(user=world.alice, organization_id=world.acme.pk, month=month))
    former = [r for r in rows if r["user_id"] == world.bob.pk]
    assert len(former) == 1 and former[0]["name"] == "Former member" and not former[0]["is_member"]
    assert (
        former[0]["calls"]
        == ledger_totals(
            where="organization_id = %s AND user_id = %s AND date_trunc('month', day) = %s", params=[world.acme.pk, world.bob.pk, month]
        )["calls"]
    )


def test_staff_overview_reads_every_tenant_and_equals_the_ledger(world):
    now = world.now
    with rls.privileged(reason="test: API log rows"):
        for minutes, status in ((5, 200), (10, 200), (20, 201), (30, 404), (40, 500), (90, 503), (60 * 25, 500)):
            ApiLog.objects.create(
                request_uuid=__import__("uuid").uuid4(),
                route="/api/v1/me",
                method="GET",
                status=status,
                duration_ms=12,
                created_at=now - timedelta(minutes=minutes),
            )
    reasons = []
    receiver = lambda sender, reason, **kwargs: reasons.append(reason)  # noqa: E731
    rls.privileged_entered.connect(receiver)
    try:
        overview = selectors.staff_usage_overview(now=now)  # no context: staff reads need the privileged one
    finally:
        rls.privileged_entered.disconnect(receiver)
    assert "staff usage dashboard" in reasons
    today = selectors.usage_today()
    month = month_start(today)
    this_month = "date_trunc('month', day) = %s"
    assert totals_of(overview["totals"]) == totals_of(ledger_totals(where=this_month, params=[month]))
    users = ledger(where=this_month, params=[month], group_by="user_id")
    assert overview["totals"]["active_users"] == len(users)
    assert [r["user_id"] for r in overview["top_users"]] == [
        u["user_id"] for u in sorted(users, key=lambda u: (-u["cost"], -u["total_tokens"]))
    ]
    assert {r["email"] for r in overview["top_users"]} == {"alice@example.com", "bob@example.com"}
    organizations = ledger(where=this_month, params=[month], group_by="organization_id")
    assert {r["organization_id"]: totals_of(r) for r in overview["top_organizations"]} == {
        o["organization_id"]: totals_of(o) for o in organizations
    }
    assert {r["provider"]: totals_of(r) for r in overview["by_provider"]} == {
        p["provider"]: totals_of(p) for p in ledger(where=this_month, params=[month], group_by="provider")
    }
    assert {(r["provider"], r["model"]): totals_of(r) for r in overview["by_model"]} == {
        (m["provider"], m["model"]): totals_of(m) for m in ledger(where=this_month, params=[month], group_by="provider, model")
    }
    daily = {d["day"]: totals_of(d) for d in ledger(where="day > %s", params=[today - timedelta(days=30)], group_by="day")}
    assert len(overview["daily"]) == 30 and overview["daily"][-1]["date"] == today
    assert {d["date"]: totals_of(d) for d in overview["daily"] if d["calls"]} == daily
    api = overview["api"]
    assert (api["requests"], api["client_errors"], api["server_errors"]) == (6, 1, 2)
    assert api["error_rate"] == pytest.approx(3 / 6) and api["server_error_rate"] == pytest.approx(2 / 6)
    assert sum(h["requests"] for h in api["hours"]) == 6 and 24 <= len(api["hours"]) <= 25
