"""The billing page: current plan, usage bars with the reset date, plan table, changes by
owners and admins only, the payment-not-configured note; admin pages and actions."""

import pytest
from django.urls import reverse

from accounts.models import Membership
from accounts.tests.factories import make_user
from billing import services
from billing.models import Plan, RevenueSnapshot, Subscription
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
PLAN_FORM = {
    "name": "Pro",
    "slug": "pro",
    "monthly_price": "20.00",
    "yearly_price": "200.00",
    "currency": "usd",
    "features": "{}",
    "allowed_providers": "echo,openai",
    "allowed_models": "",
    "monthly_tokens": "6000000",
    "monthly_messages": "20000",
    "requests_per_minute": "60",
    "max_conversations": "1000",
    "trial_days": "14",
    "is_active": "on",
    "display_order": "1",
}


@pytest.fixture
def owner(plans, client):
    user = make_user()
    client.force_login(user)
    return user, organization_of(user)


def test_the_page_shows_plan_usage_plans_and_payment_not_configured(client, owner):
    _, org = owner
    response = client.get("/billing/")
    content = response.content.decode()
    assert response.status_code == 200
    assert 'data-testid="plan-name">Free<' in content
    assert 'data-testid="limit-monthly_tokens">100,000<' in content
    assert "Monthly limits reset on" in content
    assert "Payment is not configured" in content
    assert 'data-testid="choose-pro"' in content and "Request Pro" in content
    assert 'href="/billing/"' in content  # linked from the settings navigation


def test_an_owner_downgrades_now_and_sees_the_new_limits(client, owner, plans):
    _, org = owner
    put_on_plan(org, plans["pro"])
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "free", "immediately": "on"})
    assert response.status_code == 302
    assert current_subscription(org).plan.slug == "free"
    assert 'data-testid="limit-monthly_tokens">100,000<' in client.get(response.url).content.decode()


def test_a_member_reads_the_page_but_cannot_change(client, plans):
    owner, member = make_user(), make_user()
    org = organization_of(owner)
    with rls.privileged(reason="test"):
        Membership.objects.create(organization=org, user=member, role="member")
    client.force_login(member)
    content = client.get(f"/billing/?org={org.pk}").content.decode()
    assert "owners and admins change the plan" in content and 'data-testid="choose-pro"' not in content
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "pro"})
    assert response.status_code == 403 and "Only the organization" in response.content.decode()


def test_bad_input_is_a_page_error_not_a_500(client, owner):
    _, org = owner
    assert client.post(reverse("billing:change", args=[org.pk]), {"plan": ""}).status_code == 400
    assert client.post(reverse("billing:change", args=[org.pk]), {"plan": "gold"}).status_code == 400
    assert client.post(reverse("billing:cancel", args=[org.pk])).status_code == 400  # nothing to cancel on free
    assert client.get("/billing/?org=not-a-uuid").status_code == 404


def test_admin_lists_subscriptions_and_changes_plan_through_the_service(client, plans):
    staff = make_user(role="staff", is_superuser=True)
    org = organization_of(make_user())
    client.force_login(staff)
    for url in ("/admin/billing/plan/", "/admin/billing/subscription/?status__exact=active", "/admin/billing/stripeevent/"):
        assert client.get(url).status_code == 200, url
    edit = f"/admin/billing/plan/{plans['pro'].pk}/change/"
    assert client.get(edit).status_code == 200
    assert client.post(edit, PLAN_FORM).status_code == 302  # staff edit plans (worker role)
    with rls.privileged(reason="test"):
        assert Plan.objects.get(slug="pro").monthly_tokens == 6_000_000
    subscription = current_subscription(org)
    response = client.post(
        "/admin/billing/subscription/", {"action": "change_plan", "_selected_action": [subscription.pk], "plan": plans["pro"].pk}
    )
    assert response.status_code == 302
    assert current_subscription(org).plan.slug == "pro"
    client.post(
        "/admin/billing/subscription/", {"action": "extend_trial", "_selected_action": [current_subscription(org).pk], "days": "10"}
    )
    assert current_subscription(org).status == Subscription.Status.TRIALING
    client.post("/admin/billing/subscription/", {"action": "cancel_now", "_selected_action": [current_subscription(org).pk]})
    assert current_subscription(org).plan.slug == "free"


def test_a_downgrade_waits_for_the_period_end_and_can_be_resumed(client, owner, plans):
    _, org = owner
    with rls.privileged(reason="staff in admin"):
        services.subscription_plan_set(organization=org, plan=plans["pro"])
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "free"}, follow=True)
    content = response.content.decode()
    assert "You will move to the Free plan when the current period ends." in content
    assert "You move to the Free plan when this period ends." in content
    assert 'data-testid="plan-name">Pro<' in content
    response = client.post(reverse("billing:resume", args=[org.pk]), follow=True)
    assert "Your plan continues." in response.content.decode()
    assert current_subscription(org).scheduled_plan_id is None


def test_revenue_snapshots_and_stripe_events_are_read_only_for_staff_in_admin(client, plans):
    from billing.revenue import revenue_snapshot_take

    with rls.privileged(reason="test"):
        snapshot = revenue_snapshot_take()
    client.force_login(make_user())
    assert client.get("/admin/billing/revenuesnapshot/")["Location"].startswith("/admin/login/")
    client.force_login(make_user(role="staff", is_superuser=True))
    assert client.get("/admin/billing/revenuesnapshot/").status_code == 200
    assert client.get(f"/admin/billing/revenuesnapshot/{snapshot.pk}/change/").status_code == 200  # the view page
    for model in ("revenuesnapshot", "stripeevent"):
        assert client.get(f"/admin/billing/{model}/add/").status_code == 403
    response = client.post(f"/admin/billing/revenuesnapshot/{snapshot.pk}/change/", {"mrr": "1.00", "arr": "12.00"})
    assert response.status_code == 403
    assert client.post(f"/admin/billing/revenuesnapshot/{snapshot.pk}/delete/", {"post": "yes"}).status_code == 403
    with rls.privileged(reason="test"):
        assert RevenueSnapshot.objects.get(pk=snapshot.pk).mrr == snapshot.mrr
