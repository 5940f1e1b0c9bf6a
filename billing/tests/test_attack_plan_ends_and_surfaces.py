"""The usage and billing surfaces users touch, as an attacker and a demanding user find them
(review of 2026-12-03): plan changes decided against the subscribed plan rather than the plan in
force, a spend budget the pages and API never showed, Stripe Checkout returning an
organization's owner to another organization's billing page, and the usage page saying "No plan
limit yet" for every organization. Each test failed before its fix."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.tests.factories import make_user
from accounts.tests.test_api import session_client
from billing import selectors as billing_selectors
from billing.models import Plan
from billing.tests.conftest import fake_stripe, plans  # noqa: F401  (fixtures)
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _subscription_api(org) -> str:
    return f"/api/v1/organizations/{org.pk}/subscription"


def _plan_in_force(org) -> str:
    with rls.privileged(reason="test: read the plan in force"):
        return billing_selectors.plan_in_force(subscription=current_subscription(org)).slug


def _team_of(user, name="Acme"):
    from accounts.services.organizations import organization_create

    with rls.atomic():
        rls.context_set(user_id=user.pk)
        return organization_create(user=user, name=name)


# --- 1. A cancelled plan whose period has ended is bought back without paying ----------------------


@pytest.mark.parametrize("immediately", [True, False])
@pytest.mark.parametrize("ending", ["cancelled", "downgraded_to_free"])
def test_a_cancelled_plan_whose_period_ended_cannot_be_swapped_for_a_paid_plan_without_checkout(fake_stripe, plans, immediately, ending):  # noqa: F811
    """An organization on Enterprise (granted by staff, no Stripe) cancels; its period ends. From
    that moment the Free plan is in force (plan_in_force; the API says plan=free), as the resume
    guard already knows ("The period has ended, and the change with it"). The owner then POSTs
    {"plan": "pro"} to the subscription API, with payment configured. Now: subscription_change
    ranks Pro against the *subscribed* Enterprise row, calls it a downgrade and either puts Pro
    in place at once (immediately=true) or schedules it for a period end that is already past
    (so plan_in_force answers Pro at once): 200, Pro's limits, no checkout, nothing paid, and the
    periods task then renews it every month. Should: Pro is an upgrade from the Free plan in
    force, so it goes through checkout (201 checkout_url) and Free stays in force until paid.
    The same with a downgrade to Free scheduled for the period's end instead of a cancellation.
    (Choosing Enterprise again is likewise refused "You are already on the Enterprise plan".)"""
    user = make_user()
    org = organization_of(user)
    ended = timezone.now() - timedelta(minutes=5)
    how = {"cancel_at_period_end": True} if ending == "cancelled" else {"scheduled_plan": plans["free"], "scheduled_interval": "month"}
    put_on_plan(org, plans["enterprise"], current_period_start=ended - timedelta(days=30), current_period_end=ended, **how)
    client = session_client(user)
    assert client.get(_subscription_api(org)).json()["plan"]["slug"] == "free"  # the cancellation applied

    response = client.post(_subscription_api(org), {"plan": "pro", "immediately": immediately}, format="json")

    assert response.status_code != 200, (response.status_code, response.json().get("plan", {}).get("slug"))
    assert _plan_in_force(org) == "free"


# --- 2. The plan's spend budget is enforced but never shown ------------------------------------


def test_the_subscription_api_shows_the_plans_monthly_spend_budget(plans):  # noqa: F811
    """Staff give the Free plan a monthly spend budget of 5.00 USD (Plan.monthly_spend; README:
    "a plan's monthly spend budget ... 402"). entitlement_check refuses calls beyond it ("Your
    Free plan includes $5.00 of model usage a month"), but GET /api/v1/organizations/{id}/subscription
    ("plan in force, status, limits and usage against each") has no monthly_spend in `plan` nor
    in `limits`, and GET /api/v1/plans and the billing page's limits and plan table omit it too:
    a user cannot see the budget they are refused on, nor how much of it is used. Should: the
    plan carries monthly_spend, and `limits` lists it with this month's spend."""
    user = make_user()
    org = organization_of(user)
    with rls.privileged(reason="test: a spend budget"):
        Plan.objects.filter(slug="free").update(monthly_spend=Decimal("5.00"))
    client = session_client(user)
    body = client.get(_subscription_api(org)).json()
    assert body["plan"]["slug"] == "free"
    assert body["plan"]["monthly_spend"] == "5.00", sorted(body["plan"])
    assert body["spend"] == {"limit": "5.00", "used": "0.0000000000", "currency": "usd"}, body.get("spend")
    assert {p["slug"]: p["monthly_spend"] for p in client.get("/api/v1/plans").json()}["free"] == "5.00"
    page = client.get(f"/billing/?org={org.pk}").content.decode()
    assert 'data-testid="limit-monthly_spend">5.00<' in page and "Model spend a month" in page


# --- 3. Checkout returns to the wrong organization's billing page --------------------------------


def test_checkout_for_a_team_returns_to_that_teams_billing_page(client, fake_stripe, plans):  # noqa: F811
    """Alice owns her personal workspace and the team Acme. On Acme's billing page she buys Pro:
    POST /billing/checkout/ organization=<acme>. The Checkout session's success_url and
    cancel_url are /billing/?checkout=success and ?checkout=canceled, without the organization:
    back from Stripe she lands on her *personal* workspace's billing page, which still says
    Free (and a refused checkout likewise redirects to /billing/, showing its error above the
    wrong organization). Should: both URLs lead back to /billing/?org=<acme>."""
    alice = make_user()
    acme = _team_of(alice)
    client.force_login(alice)
    response = client.post("/billing/checkout/", {"organization": str(acme.pk), "plan": "pro", "interval": "month"})
    assert response.status_code == 302 and response["Location"].startswith("https://checkout.stripe.com/"), response["Location"]
    [session] = [r for r in fake_stripe.requests if r["method"] == "POST" and r["path"] == "/v1/checkout/sessions"]
    urls = (session["form"]["success_url"], session["form"]["cancel_url"])
    assert all(str(acme.pk) in url for url in urls), urls


# --- 4. The usage page says no plan limit applies ------------------------------------------------


def test_the_usage_page_shows_the_organizations_plan_limit_not_no_plan_limit_yet(client, plans):  # noqa: F811
    """Alice administers Acme, on the Free plan (100,000 tokens and 1,000 messages a month,
    enforced by billing on every call). /usage/?organization=<acme> says of Acme "... so far ·
    No plan limit yet", and its three month-to-date figures "No plan limit yet" too:
    analytics.views.dashboard still passes `limits: {}` and `organization_limits: {}` ("Plan
    limits arrive with billing ... none yet"), though billing arrived. A member near the limit is
    told there is none, then refused with a 402. Should: show the plan in force's limits
    (billing.selectors.subscription_overview / plan_in_force) against the month's usage."""
    alice = make_user()
    acme = _team_of(alice)
    client.force_login(alice)
    response = client.get("/usage/", {"organization": str(acme.pk)})
    assert response.status_code == 200
    assert response.context["organization"].pk == acme.pk
    section = re.search(r'id="by-member".*?data-testid="organization-limits".*?</div>\s*</div>\s*</div>', response.content.decode(), re.S)
    assert section, response.content.decode()[-3000:]
    assert "No plan limit yet" not in section.group(0) and "of 100,000 this month" in section.group(0), section.group(0)


def test_the_billing_page_offers_plans_against_the_plan_in_force_once_a_cancelled_period_ends(client, plans):  # noqa: F811
    """The page marked the cancelled Enterprise "Current" and offered no way back to it (its table
    compared with the subscribed plan), while Free was in force: it now marks Free and offers
    Enterprise again (bought as an upgrade), as the service decides."""
    user = make_user()
    org = organization_of(user)
    ended = timezone.now() - timedelta(minutes=5)
    put_on_plan(
        org, plans["enterprise"], current_period_start=ended - timedelta(days=30), current_period_end=ended, cancel_at_period_end=True
    )
    client.force_login(user)
    page = client.get(f"/billing/?org={org.pk}").content.decode()
    head = re.search(r'data-testid="plan-table">\s*<thead>(.*?)</thead>', page, re.S).group(1)
    assert re.search(r"Free <span class=\"badge badge-primary\">Current</span>", head), head
    assert 'data-testid="choose-enterprise"' in page and 'data-testid="choose-free"' not in page
    # Nor a "Resume" the service refuses once the period has ended ("The period has ended...").
    assert f"/billing/{org.pk}/resume/" not in page and "Cancel at period end" not in page
