"""What staff do to subscriptions and plans in admin (an attacker's review, 2026-12-01): each test
failed before its fix, for the bug its docstring names."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.tests.factories import make_user
from billing import selectors
from billing.models import Plan, Subscription
from billing.tests.factories import current_subscription, organization_of
from billing.tests.test_attack_billing import _stripe_calls_on, on_stripe_enterprise
from billing.tests.test_pages import PLAN_FORM
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
CHANGELIST = "/admin/billing/subscription/"


@pytest.fixture
def staff(plans):
    client = Client(raise_request_exception=False)
    client.force_login(make_user(email="staff@example.com", role="staff", is_superuser=True))
    return client


@pytest.fixture
def paying(fake_stripe):
    """An organization paying Enterprise through Stripe (sub_1), applied by the real webhook path."""
    org = organization_of(make_user())
    on_stripe_enterprise(org)
    fake_stripe.requests.clear()
    return org


def _untouched_or_stripe_told(org, fake_stripe) -> bool:
    current = current_subscription(org)
    untouched = (current.plan.slug, current.status, current.stripe_subscription_id, current.trial_end) == (
        "enterprise",
        "active",
        "sub_1",
        None,
    )
    return untouched or bool(_stripe_calls_on(fake_stripe, "sub_1"))


def test_staff_cancel_now_of_a_stripe_paid_plan_stops_stripe_billing_or_is_refused(staff, paying, fake_stripe):
    """ "Cancel now (move to Free)" on an organization paying Enterprise through Stripe:
    subscription_end_now -> subscription_plan_set -> _replace puts it on Free and blanks
    stripe_subscription_id, and nobody tells Stripe, which keeps charging $200 a month for a
    plan the organization no longer has (the owner's own paths refuse: refuse_if_billed_by_stripe)."""
    response = staff.post(CHANGELIST, {"action": "cancel_now", "_selected_action": [current_subscription(paying).pk]})
    assert response.status_code == 302
    assert _untouched_or_stripe_told(paying, fake_stripe), (current_subscription(paying).plan.slug, fake_stripe.requests)


def test_staff_change_plan_of_a_stripe_paid_plan_changes_stripe_too_or_is_refused(staff, paying, fake_stripe, plans):
    """ "Change plan (now)" Enterprise -> Pro on a Stripe subscription: Confab says Pro (and keeps
    sub_1), Stripe keeps billing the Enterprise price, and its next renewal event puts
    Enterprise back."""
    response = staff.post(
        CHANGELIST, {"action": "change_plan", "_selected_action": [current_subscription(paying).pk], "plan": plans["pro"].pk}
    )
    assert response.status_code == 302
    assert _untouched_or_stripe_told(paying, fake_stripe), (current_subscription(paying).plan.slug, fake_stripe.requests)


def test_staff_extend_trial_of_a_stripe_paid_plan_does_not_drop_it_to_free_while_stripe_charges(staff, paying, fake_stripe):
    """ "Extend trial" on an active, paid Stripe subscription: subscription_trial_extend sets it
    `trialing` with a trial_end here only. Stripe is not told (no trial there: it keeps
    charging), and when that made-up trial ends plan_in_force drops the paying organization to
    the Free plan's limits (and the periods task replaces the subscription with Free)."""
    response = staff.post(CHANGELIST, {"action": "extend_trial", "_selected_action": [current_subscription(paying).pk], "days": "14"})
    assert response.status_code == 302
    current = current_subscription(paying)
    after = timezone.now() + timedelta(days=15)
    in_force_then = selectors.plan_in_force(subscription=current, now=after).slug
    stripe_told = bool(_stripe_calls_on(fake_stripe, "sub_1"))
    assert stripe_told or (current.status == "active" and in_force_then == "enterprise"), (current.status, current.trial_end, in_force_then)


@pytest.mark.parametrize("features", ['{"badge": NaN}', '{"limit": Infinity}', '{"note": "a\\u0000b"}'])
def test_a_plan_feature_the_database_cannot_store_is_a_form_error_not_a_500(staff, plans, features):
    """The plan form's `features` JSON takes NaN, Infinity (Python's json.loads accepts them)
    and a \\u0000 escape; PostgreSQL's jsonb refuses all three, so saving the plan is a 500."""
    response = staff.post(f"/admin/billing/plan/{plans['pro'].pk}/change/", {**PLAN_FORM, "features": features})
    assert response.status_code == 200, response.status_code  # the form again, with its error
    with rls.privileged(reason="test"):
        assert Plan.objects.get(slug="pro").features == plans["pro"].features


def test_renaming_the_free_plans_slug_is_refused(staff, plans):
    """The code finds the Free plan by slug ('free': billing.selectors.plan_free and the
    organization-creation trigger of billing 0001). Staff renaming it in the plan form
    ("free" -> "starter") leaves every existing organization on "starter" while the trigger
    silently recreates a *new* Free plan with hard-coded limits for every new organization,
    and "Cancel now" / ended trials move organizations to that one."""
    free = plans["free"]
    form = {
        **PLAN_FORM,
        "name": "Starter",
        "slug": "starter",
        "monthly_price": "0",
        "yearly_price": "0",
        "allowed_models": "echo-1",
        "monthly_tokens": "5000",
    }
    staff.post(f"/admin/billing/plan/{free.pk}/change/", form)
    newcomer = organization_of(make_user())
    with rls.privileged(reason="test"):
        plan_of_newcomer = Subscription.objects.get(organization=newcomer, status="active").plan
        free_plans = Plan.objects.filter(monthly_price=0, yearly_price=0).count()
    assert plan_of_newcomer.pk == free.pk and free_plans == 1, (plan_of_newcomer.slug, plan_of_newcomer.monthly_tokens, free_plans)


@pytest.mark.parametrize(("cap", "saved"), [("4097", False), ("4096", True), ("", True)])
def test_a_plans_output_cap_above_the_platforms_ceiling_is_a_form_error(staff, plans, settings, cap, saved):
    """Every call is capped at CHAT_MAX_OUTPUT_TOKENS too (billing.services.entitlement_check), so
    a plan set to 8,192 gave its customers 4,096 without a word to the staff member who set it."""
    settings.CHAT_MAX_OUTPUT_TOKENS = 4096
    response = staff.post(f"/admin/billing/plan/{plans['pro'].pk}/change/", {**PLAN_FORM, "max_output_tokens": cap})
    with rls.privileged(reason="test"):
        stored = Plan.objects.get(slug="pro").max_output_tokens
    if saved:
        assert response.status_code == 302 and stored == (int(cap) if cap else None)
    else:
        assert response.status_code == 200 and "At most 4,096" in response.content.decode()
        assert stored == plans["pro"].max_output_tokens
