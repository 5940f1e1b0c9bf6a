"""Attack tests on the staff revenue figures (billing/revenue.py). Each builds a small, known set
of subscriptions through the product's own paths (the periods task, staff actions in admin,
a plan edited in admin) and asserts the figure a finance reader would expect."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.tests.factories import make_user
from billing import services
from billing.models import Plan, Subscription
from billing.revenue import revenue_figures
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from billing.tests.test_pages import PLAN_FORM
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _figures(now=None):
    with rls.privileged(reason="test"):
        return revenue_figures(now=now or timezone.now())


def _earlier_this_month(now, minutes):
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return max(month_start, now - timedelta(minutes=minutes))


def test_a_trial_that_ends_unpaid_is_not_churn(plans):
    """A Pro trial that ends without a payment falls to Free (the periods task). The organization
    never paid: losing it is a trial that did not convert, not a paying customer churned."""
    now = timezone.now()
    org = organization_of(make_user())
    put_on_plan(org, plans["pro"], status="trialing", trial_end=_earlier_this_month(now, 1))
    assert services.subscription_periods_advance(now=now) == 1
    assert current_subscription(org).plan.slug == "free"
    figures = _figures(now)
    assert figures["paying_organizations"] == 0 and figures["trial_conversions"] == 0
    assert figures["churned_this_month"] == 0, "an unpaid trial that ended was counted as churn"


def test_a_plan_sold_only_yearly_granted_in_admin_counts_in_mrr(client, plans):
    """Staff grant a plan sold only yearly (1,200 USD a year, no monthly price) in admin, as the
    README says they do for requested plans. The organization is counted as paying, and its
    MRR is a twelfth of the yearly price, 100.00: not 0."""
    with rls.privileged(reason="test"):
        annual = Plan.objects.create(
            name="Annual", slug="annual", monthly_price=Decimal("0"), yearly_price=Decimal("1200.00"), display_order=3
        )
    org = organization_of(make_user())
    client.force_login(make_user(role="staff"))
    response = client.post(
        "/admin/billing/subscription/", {"action": "change_plan", "_selected_action": [current_subscription(org).pk], "plan": annual.pk}
    )
    assert response.status_code == 302
    assert current_subscription(org).plan.slug == "annual"
    figures = _figures()
    assert figures["paying_organizations"] == 1
    assert figures["mrr"] == Decimal("100.00"), f"MRR {figures['mrr']} for a paying organization on a 1,200 USD/year plan"
    assert figures["arr"] == Decimal("1200.00")


def test_a_plan_whose_currency_staff_typed_in_capitals_still_counts(client, plans):
    """Admin accepts 'USD' for a plan's currency (the form checks only its length). Its paying
    subscribers are still dollars: they must not vanish from MRR and paying organizations."""
    staff = make_user(role="staff")
    client.force_login(staff)
    response = client.post(f"/admin/billing/plan/{plans['pro'].pk}/change/", {**PLAN_FORM, "currency": "USD"})
    assert response.status_code == 302  # accepted
    with rls.privileged(reason="test"):
        assert Plan.objects.get(slug="pro").currency == "USD"
    org = organization_of(make_user())
    put_on_plan(org, Plan.objects.get(slug="pro"))
    figures = _figures()
    assert figures["paying_organizations"] == 1, "a Pro subscriber left out because the currency was typed 'USD'"
    assert figures["mrr"] == Decimal("20.00")


def test_a_trial_converted_this_month_stays_a_conversion_after_a_later_change(plans):
    """A Pro trial converts this month (active, its trial ended this month); later in the month
    staff move the organization to Enterprise in admin. One trial converted this month."""
    now = timezone.now()
    org = organization_of(make_user())
    put_on_plan(org, plans["pro"], trial_end=_earlier_this_month(now, 2))
    assert _figures(now)["trial_conversions"] == 1
    with rls.privileged(reason="staff in admin"):
        services.subscription_plan_set(organization=org, plan=plans["enterprise"], interval=Subscription.Interval.MONTH)
    assert _figures()["trial_conversions"] == 1, "the month's conversion disappeared when the converted subscription changed plan"


def test_a_trial_converted_then_canceled_this_month_is_still_a_conversion(plans):
    """A Pro trial converts this month, then the subscription ends this month (staff 'Cancel
    now', or Stripe's subscription.deleted): the month had one conversion and one churn."""
    now = timezone.now()
    org = organization_of(make_user())
    put_on_plan(org, plans["pro"], trial_end=_earlier_this_month(now, 2))
    with rls.privileged(reason="staff in admin"):
        services.subscription_end_now(subscription=current_subscription(org))
    figures = _figures()
    assert figures["churned_this_month"] == 1
    assert figures["trial_conversions"] == 1, "a conversion this month is no longer counted once the customer churned"


def test_the_plans_chart_adds_up_two_plans_of_the_same_name(plans):
    """Staff retire Pro for a new plan also named "Pro" (slug pro-2024; names are not unique).
    One organization stays on each: the staff page's plans chart must show 2 active on "Pro"
    (or two bars), never 1."""
    import json

    from billing.revenue_views import _plans_chart

    with rls.privileged(reason="test"):
        new_pro = Plan.objects.create(name="Pro", slug="pro-2024", monthly_price=Decimal("25.00"), display_order=1)
        Plan.objects.filter(pk=plans["pro"].pk).update(is_active=False)
    put_on_plan(organization_of(make_user()), plans["pro"])
    put_on_plan(organization_of(make_user()), new_pro)
    figures = _figures()
    assert sum(r["organizations"] for r in figures["by_plan_status"] if r["status"] == "active" and r["plan_name"] == "Pro") == 2
    chart = json.loads(_plans_chart(figures["by_plan_status"]))
    active = next(d for d in chart["data"]["datasets"] if d["label"] == "active")
    shown = dict(zip(chart["data"]["labels"], active["data"]))
    assert sum(shown.values()) == 2, f"the chart shows {shown} for two active organizations on plans named Pro"
