"""POST /billing/checkout/ and /billing/portal/: owners and admins go to Stripe's hosted
pages (calls answered by a local server in Stripe's wire format); everyone else, and every
bad input, goes back to the billing page with the reason."""

import pytest
from django.contrib.messages import get_messages

from accounts.models import Membership
from accounts.tests.factories import make_user
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
CHECKOUT, PORTAL = "/billing/checkout/", "/billing/portal/"


@pytest.fixture
def owner(client, fake_stripe):
    user = make_user()
    client.force_login(user)
    return user


def refused(response) -> str:
    assert response.status_code == 302 and response["Location"] == "/billing/"
    return [m.message for m in get_messages(response.wsgi_request)][-1]  # the newest: unread ones stay in the session


def test_an_owner_is_sent_to_checkout_for_the_plan_and_interval(client, owner, fake_stripe):
    org = organization_of(owner)
    response = client.post(CHECKOUT, {"organization": org.pk, "plan": "pro", "interval": "year"})
    assert response.status_code == 302 and response["Location"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    customer, session = fake_stripe.requests
    assert (customer["path"], customer["form"]["email"], customer["idempotency_key"]) == (
        "/v1/customers",
        owner.email,
        f"confab-customer-{org.pk}",
    )
    assert session["path"] == "/v1/checkout/sessions"
    form = session["form"]
    assert (form["mode"], form["line_items[0][price]"], form["client_reference_id"]) == ("subscription", "price_pro_year", str(org.pk))
    assert form["subscription_data[metadata][organization_id]"] == str(org.pk)
    assert form["success_url"] == "http://testserver/billing/?checkout=success"
    current = current_subscription(org)
    assert current.stripe_customer_id == customer_id(fake_stripe) and current.plan.slug == "free"  # changes on the webhook only


def customer_id(fake_stripe) -> str:
    return fake_stripe.requests[1]["form"]["customer"]


def test_a_second_checkout_reuses_the_customer(client, owner, fake_stripe):
    org = organization_of(owner)
    client.post(CHECKOUT, {"organization": org.pk, "plan": "pro", "interval": "month"})
    client.post(CHECKOUT, {"organization": org.pk, "plan": "enterprise", "interval": "month"})
    assert [r["path"] for r in fake_stripe.requests] == ["/v1/customers", "/v1/checkout/sessions", "/v1/checkout/sessions"]
    assert fake_stripe.requests[2]["form"]["customer"] == fake_stripe.requests[1]["form"]["customer"]


def test_a_member_who_is_not_owner_or_admin_is_refused(client, fake_stripe):
    owner, member = make_user(), make_user()
    org = organization_of(owner)
    with rls.privileged(reason="test factory"):
        Membership.objects.create(user=member, organization=org, role=Membership.Role.MEMBER)
    client.force_login(member)
    for url, data in ((CHECKOUT, {"organization": org.pk, "plan": "pro"}), (PORTAL, {"organization": org.pk})):
        assert refused(client.post(url, data)) == "Only the organization's owners and admins can change its billing."
    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"organization": "", "plan": "pro"}, "Choose one of your organizations."),
        ({"organization": "not-a-uuid", "plan": "pro"}, "Choose one of your organizations."),
        ({"organization": "00000000-0000-0000-0000-000000000000", "plan": "pro"}, "Choose one of your organizations."),
        ({"plan": "gold"}, "Choose one of the plans offered."),
        ({"plan": "pro", "interval": "weekly"}, "Choose a monthly or yearly interval."),
        ({"plan": "enterprise", "interval": "year"}, "The Enterprise plan cannot be bought online with yearly billing."),
        ({"plan": "free"}, "The Free plan cannot be bought online with monthly billing."),
    ],
)
def test_bad_checkout_input_gets_a_message_and_no_stripe_call(client, owner, fake_stripe, data, message):
    data = {"organization": organization_of(owner).pk, **data}
    assert refused(client.post(CHECKOUT, data)) == message
    assert fake_stripe.requests == []


def test_without_a_secret_key_payment_is_not_configured(client, owner, fake_stripe, settings):
    settings.STRIPE_SECRET_KEY = ""
    org = organization_of(owner)
    assert refused(client.post(CHECKOUT, {"organization": org.pk, "plan": "pro"})) == "Payment is not configured."
    assert refused(client.post(PORTAL, {"organization": org.pk})) == "Payment is not configured."
    assert fake_stripe.requests == []


def test_stripe_failing_gets_a_message_not_a_500(client, owner, fake_stripe):
    fake_stripe.fail_with = 500
    response = client.post(CHECKOUT, {"organization": organization_of(owner).pk, "plan": "pro"})
    assert refused(response) == "The payment provider could not complete the request; try again in a moment."


def test_an_organization_paying_through_stripe_changes_plan_in_the_portal(client, owner, fake_stripe, plans):
    org = organization_of(owner)
    put_on_plan(org, plans["pro"], stripe_customer_id="cus_42", stripe_subscription_id="sub_42")
    assert refused(client.post(CHECKOUT, {"organization": org.pk, "plan": "enterprise"})) == (
        "Your paid plan is managed in the billing portal: change or cancel it there."
    )
    response = client.post(PORTAL, {"organization": org.pk})
    assert response.status_code == 302 and response["Location"].startswith("https://billing.stripe.com/p/session/")
    [portal] = fake_stripe.requests
    assert portal["form"] == {"customer": "cus_42", "return_url": "http://testserver/billing/"}


def test_the_portal_needs_a_payment_account(client, owner, fake_stripe):
    assert refused(client.post(PORTAL, {"organization": organization_of(owner).pk})) == (
        "There is no payment account yet: choose a paid plan first."
    )


def test_checkout_and_portal_take_only_post_from_signed_in_users(client, fake_stripe):
    assert client.post(CHECKOUT, {"plan": "pro"})["Location"].startswith("/accounts/login/")
    client.force_login(make_user())
    assert client.get(CHECKOUT).status_code == 405 and client.get(PORTAL).status_code == 405
