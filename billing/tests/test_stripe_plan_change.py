"""With payment configured, choosing a paid plan on the billing page or in the API goes to
Stripe Checkout (calls answered by a local server in Stripe's wire format); the page's
"Manage payment" button opens the Customer Portal once the organization is a Stripe customer."""

import pytest
import yaml
from django.urls import resolve, reverse

from accounts.models import Membership
from accounts.tests.factories import make_user
from accounts.tests.test_api import assert_error, session_client
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
CHECKOUT_PREFIX = "https://checkout.stripe.com/c/pay/cs_test_"


@pytest.fixture
def owner(client, fake_stripe):
    user = make_user()
    client.force_login(user)
    return user, organization_of(user)


def _subscription_api(org) -> str:
    return reverse("billing-api:subscription", args=[org.pk])


def test_the_page_sends_a_paid_plan_choice_to_checkout(client, owner, fake_stripe):
    _, org = owner
    content = client.get(reverse("billing:page")).content.decode()
    assert "Switch to Pro" in content and "Request Pro" not in content
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "pro", "interval": "year"})
    assert response.status_code == 302 and response["Location"].startswith(CHECKOUT_PREFIX)
    session = fake_stripe.requests[-1]
    assert session["path"] == "/v1/checkout/sessions" and session["form"]["line_items[0][price]"] == "price_pro_year"
    assert session["form"]["success_url"] == f"http://testserver/billing/?org={org.pk}&checkout=success"
    subscription = current_subscription(org)
    assert subscription.plan.slug == "free" and subscription.requested_plan_id is None  # the webhook changes the plan


def test_the_page_shows_why_checkout_is_refused(client, owner, fake_stripe):
    _, org = owner
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "enterprise", "interval": "year"})
    assert response.status_code == 400
    assert "The Enterprise plan cannot be bought online with yearly billing." in response.content.decode()
    fake_stripe.fail_with = 500
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "pro"})
    assert response.status_code == 502 and "could not complete the request" in response.content.decode()
    assert current_subscription(org).plan.slug == "free"


def test_a_downgrade_with_payment_configured_needs_no_checkout(client, owner, plans, fake_stripe):
    _, org = owner
    put_on_plan(org, plans["enterprise"])
    response = client.post(reverse("billing:change", args=[org.pk]), {"plan": "pro", "immediately": "on"})
    assert response.status_code == 302 and response["Location"].startswith("/billing/")
    assert current_subscription(org).plan.slug == "pro" and fake_stripe.requests == []


def test_the_api_answers_a_paid_plan_with_the_checkout_url(owner, fake_stripe):
    user, org = owner
    response = session_client(user).post(_subscription_api(org), {"plan": "pro", "interval": "month"}, format="json")
    assert response.status_code == 201, response.json()
    assert set(response.json()) == {"checkout_url"} and response.json()["checkout_url"].startswith(CHECKOUT_PREFIX)
    assert fake_stripe.requests[-1]["form"]["line_items[0][price]"] == "price_pro_month"
    assert current_subscription(org).plan.slug == "free"


def test_the_api_refuses_checkout_with_a_clear_error(owner, fake_stripe):
    user, org = owner
    client = session_client(user)
    body = assert_error(client.post(_subscription_api(org), {"plan": "enterprise", "interval": "year"}, format="json"), 400)
    assert body["extra"]["code"] == "plan_not_for_sale"
    fake_stripe.fail_with = 500
    assert assert_error(client.post(_subscription_api(org), {"plan": "pro"}, format="json"), 502)["extra"]["code"] == "stripe_error"


def test_the_api_free_plan_and_no_payment_behave_as_before(owner, plans, settings, fake_stripe):
    user, org = owner
    client = session_client(user)
    put_on_plan(org, plans["pro"])
    response = client.post(_subscription_api(org), {"plan": "free", "immediately": True}, format="json")
    assert response.status_code == 200 and response.json()["plan"]["slug"] == "free"
    settings.STRIPE_SECRET_KEY = ""
    response = client.post(_subscription_api(org), {"plan": "pro"}, format="json")
    assert response.status_code == 200 and response.json()["requested_plan"] == "pro"
    assert fake_stripe.requests == []


def test_the_schema_documents_the_checkout_answer(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    responses = schema["paths"]["/api/v1/organizations/{organization_id}/subscription"]["post"]["responses"]
    created = responses["201"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][created]["properties"]["checkout_url"]["format"] == "uri"
    assert {"200", "400", "403", "404", "502"} <= set(responses)


def test_manage_payment_shows_for_a_stripe_customer_and_opens_the_portal(client, owner, plans, fake_stripe):
    _, org = owner
    assert "Manage payment" not in client.get(reverse("billing:page")).content.decode()  # no Stripe customer yet
    put_on_plan(org, plans["pro"], stripe_customer_id="cus_42", stripe_subscription_id="sub_42")
    content = client.get(reverse("billing:page")).content.decode()
    assert f'action="{reverse("billing:portal")}"' in content and "Manage payment" in content
    assert f'name="organization" value="{org.pk}"' in content
    response = client.post(reverse("billing:portal"), {"organization": org.pk})
    assert response.status_code == 302 and response["Location"].startswith("https://billing.stripe.com/p/session/")


def test_manage_payment_is_hidden_without_payment_or_for_members(client, owner, plans, fake_stripe, settings):
    user, org = owner
    put_on_plan(org, plans["pro"], stripe_customer_id="cus_42", stripe_subscription_id="sub_42")
    member = make_user()
    with rls.privileged(reason="test"):
        Membership.objects.create(organization=org, user=member, role=Membership.Role.MEMBER)
    client.force_login(member)
    assert "Manage payment" not in client.get(f"{reverse('billing:page')}?org={org.pk}").content.decode()
    settings.STRIPE_SECRET_KEY = ""
    client.force_login(user)
    assert "Manage payment" not in client.get(reverse("billing:page")).content.decode()


def test_billing_routes_are_one_namespace_and_the_webhook_path_stays(client):
    assert reverse("billing:stripe-webhook") == "/billing/stripe/webhook"
    assert (reverse("billing:checkout"), reverse("billing:portal"), reverse("billing:staff")) == (
        "/billing/checkout/",
        "/billing/portal/",
        "/billing/staff/",
    )
    for path in ("/billing/", "/billing/checkout/", "/billing/stripe/webhook", "/billing/staff/"):
        assert resolve(path).namespace == "billing", path
