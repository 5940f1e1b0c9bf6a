"""POST /billing/checkout/ and /billing/portal/: owners and admins go to Stripe's hosted
pages (calls answered by a local server in Stripe's wire format); everyone else, and every
bad input, goes back to the billing page with the reason."""

import re
import threading
import time

import pytest
from django.contrib.messages import get_messages

from accounts.models import Membership
from accounts.tests.factories import make_user
from accounts.tests.test_api import session_client
from billing import selectors, stripe_services
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from billing.tests.stripe_server import event, subscription_object
from billing.tests.test_attack_billing import delivered_and_applied, subscription_api
from config.cache import redis_client
from config.db import rls
from config.errors import ApplicationError
from config.tests.races import on_a_thread, open_transactions, until

pytestmark = pytest.mark.django_db(transaction=True)
CHECKOUT, PORTAL = "/billing/checkout/", "/billing/portal/"


@pytest.fixture
def owner(client, fake_stripe):
    user = make_user()
    client.force_login(user)
    return user


def refused(response) -> str:
    # Back to the billing page of the organization the form named (of the first one when it named none of the caller's).
    assert response.status_code == 302 and re.fullmatch(r"/billing/(\?org=[0-9a-f-]{36})?", response["Location"]), response["Location"]
    return [m.message for m in get_messages(response.wsgi_request)][-1]  # the newest: unread ones stay in the session


def test_an_owner_is_sent_to_checkout_for_the_plan_and_interval(client, owner, fake_stripe):
    org = organization_of(owner)
    response = client.post(CHECKOUT, {"organization": org.pk, "plan": "pro", "interval": "year"})
    assert response.status_code == 302 and response["Location"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    customer, subscriptions, sessions, session = fake_stripe.requests
    # Before the session: none of the customer's subscriptions is live, none of its checkouts open.
    assert (subscriptions["path"], subscriptions["form"]["customer"], subscriptions["form"]["status"]) == (
        "/v1/subscriptions",
        customer_id(fake_stripe),
        "all",
    )
    assert (sessions["method"], sessions["path"], sessions["form"]["status"]) == ("GET", "/v1/checkout/sessions", "open")
    assert (customer["path"], customer["form"]["email"], customer["idempotency_key"]) == (
        "/v1/customers",
        owner.email,
        f"confab-customer-{org.pk}",
    )
    assert session["path"] == "/v1/checkout/sessions"
    form = session["form"]
    assert (form["mode"], form["line_items[0][price]"], form["client_reference_id"]) == ("subscription", "price_pro_year", str(org.pk))
    assert form["subscription_data[metadata][organization_id]"] == str(org.pk)
    assert form["success_url"] == f"http://testserver/billing/?org={org.pk}&checkout=success"
    current = current_subscription(org)
    assert current.stripe_customer_id == customer_id(fake_stripe) and current.plan.slug == "free"  # changes on the webhook only


def customer_id(fake_stripe) -> str:
    return next(r["form"]["customer"] for r in fake_stripe.requests if r["method"] == "POST" and r["path"] == "/v1/checkout/sessions")


def test_a_second_checkout_reuses_the_customer_and_expires_the_first(client, owner, fake_stripe):
    """Two tabs, or a second try: only the newest checkout can be paid, or both could be, and the
    organization would pay for two subscriptions."""
    org = organization_of(owner)
    first = client.post(CHECKOUT, {"organization": org.pk, "plan": "pro", "interval": "month"})["Location"]
    second = client.post(CHECKOUT, {"organization": org.pk, "plan": "enterprise", "interval": "month"})["Location"]
    created = [r for r in fake_stripe.requests if r["method"] == "POST" and r["path"] == "/v1/checkout/sessions"]
    assert [r["path"] for r in fake_stripe.requests].count("/v1/customers") == 1
    assert created[0]["form"]["customer"] == created[1]["form"]["customer"]
    by_url = {session["url"]: session for session in fake_stripe.sessions.values() if session["url"]}
    assert list(by_url) == [second] and first not in by_url
    assert sorted(session["status"] for session in fake_stripe.sessions.values()) == ["expired", "open"]


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
    assert portal["form"] == {"customer": "cus_42", "return_url": f"http://testserver/billing/?org={org.pk}"}  # back to its own page


def test_the_portal_needs_a_payment_account(client, owner, fake_stripe):
    assert refused(client.post(PORTAL, {"organization": organization_of(owner).pk})) == (
        "There is no payment account yet: choose a paid plan first."
    )


def test_checkout_and_portal_take_only_post_from_signed_in_users(client, fake_stripe):
    assert client.post(CHECKOUT, {"plan": "pro"})["Location"].startswith("/accounts/login/")
    client.force_login(make_user())
    assert client.get(CHECKOUT).status_code == 405 and client.get(PORTAL).status_code == 405


# --- One open checkout per organization -------------------------------------------------------

ALREADY = "This organization already has a subscription at Stripe (it shows here within a minute): change it in the billing portal."


def _checkout(owner, plans, plan="pro") -> str:
    """As the checkout page does, outside any transaction (it opens its own)."""
    return stripe_services.checkout_session_create(
        actor=owner, organization=organization_of(owner), plan=plans[plan], interval="month", return_url="http://testserver/billing/"
    )


def _created(fake_stripe) -> list[dict]:
    return [r for r in fake_stripe.requests if r["method"] == "POST" and r["path"] == "/v1/checkout/sessions"]


def test_a_subscription_paid_at_stripe_but_not_yet_here_refuses_another_checkout(owner, plans, fake_stripe):
    """The first checkout was paid; its webhook has not arrived, so the plan here is still Free."""
    url = _checkout(owner, plans)
    [session] = fake_stripe.sessions.values()
    session["status"] = "complete"
    fake_stripe.subscriptions["sub_paid"] = subscription_object("sub_paid", price="price_pro_month", customer=session["customer"])
    with pytest.raises(ApplicationError) as refusal:
        _checkout(owner, plans, "enterprise")
    assert (str(refusal.value), refusal.value.extra["code"]) == (ALREADY, "use_portal")
    assert len(_created(fake_stripe)) == 1 and session["url"] == url  # no second checkout made, the paid one left alone
    fake_stripe.subscriptions["sub_paid"]["status"] = "canceled"  # once it has ended, a new one may be bought
    assert _checkout(owner, plans, "enterprise").startswith("https://checkout.stripe.com/")


def test_a_checkout_paid_while_the_next_is_made_refuses_the_next(owner, plans, fake_stripe):
    """Paid between Confab listing the open checkouts and expiring it: the expire is refused."""
    _checkout(owner, plans)
    [session] = fake_stripe.sessions.values()

    def paid_just_before_the_expire(method, path):
        if path.endswith("/expire"):
            session["status"] = "complete"

    fake_stripe.before = paid_just_before_the_expire
    with pytest.raises(ApplicationError, match="already has a subscription at Stripe"):
        _checkout(owner, plans, "enterprise")
    assert len(_created(fake_stripe)) == 1


def test_two_checkouts_at_once_leave_one_open(owner, plans, fake_stripe):
    """A double click: the second request waits for the first's checkout, then expires it. Held
    in order: the first is kept inside Stripe's create until the second has tried the
    organization's lock (Redis counts the attempts) or, without the lock, has listed the open checkouts."""
    first_creating, release, second_listed = threading.Event(), threading.Event(), threading.Event()
    listings = []

    def before(method, path):
        if method == "GET" and path == "/v1/checkout/sessions":
            listings.append(path)
            if len(listings) == 2:
                second_listed.set()
        if method == "POST" and path == "/v1/checkout/sessions" and not first_creating.is_set():
            first_creating.set()
            release.wait(10)

    fake_stripe.before = before
    urls, errors = [], []

    def send():
        urls.append(_checkout(owner, plans))

    def lock_attempts() -> int:
        return redis_client().info("commandstats").get("cmdstat_set", {}).get("calls", 0)

    first = on_a_thread(send, errors)
    assert first_creating.wait(10)
    attempts = lock_attempts()
    second = on_a_thread(send, errors)
    until(lambda: lock_attempts() >= attempts + 3 or second_listed.is_set(), "the second checkout waiting, or listing")
    release.set()
    first.join(10)
    second.join(10)
    assert errors == [] and len(urls) == 2
    assert sorted(session["status"] for session in fake_stripe.sessions.values()) == ["expired", "open"]


def test_a_checkout_waiting_past_its_time_is_refused_with_a_sentence(owner, plans, fake_stripe, monkeypatch):
    """Another window's checkout holds the organization's lock past the wait: a 409 sentence, nothing made."""
    monkeypatch.setattr(stripe_services, "CHECKOUT_WAIT_SECONDS", 0.2)
    held = redis_client().lock(f"billing:checkout:{organization_of(owner).pk}", timeout=30)
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(ApplicationError, match="being prepared in another window") as refusal:
            _checkout(owner, plans)
    finally:
        held.release()
    assert refusal.value.status_code == 409 and _created(fake_stripe) == []


@pytest.mark.parametrize("path", ["checkout page", "plan change page", "subscription API", "portal page"])
def test_no_transaction_is_open_while_stripe_answers(client, owner, plans, fake_stripe, path):
    """Was: the request's transaction (the middleware's, and the checkout's own lock with it) stayed
    open across every Stripe call, a pooled connection with it: a slow Stripe, or an owner's script
    sending checkouts, took the worker's connections one by one. Should: none is open while Stripe answers."""
    org = organization_of(owner)
    seen = []
    fake_stripe.before = lambda method, path: seen.append(open_transactions())
    if path == "portal page":
        put_on_plan(org, plans["free"], stripe_customer_id="cus_1")
        response = client.post(PORTAL, {"organization": org.pk})
    elif path == "checkout page":
        response = client.post(CHECKOUT, {"organization": org.pk, "plan": "pro", "interval": "month"})
    elif path == "plan change page":
        response = client.post(f"/billing/{org.pk}/change/", {"plan": "pro", "interval": "month"})
    else:
        response = client.post(subscription_api(org), {"plan": "pro"}, content_type="application/json")
    assert response.status_code in (201, 302), response.content[:300]
    assert seen and set(seen) == {0}, seen


@pytest.mark.parametrize(
    ("stripe_status", "refused"),
    [
        ("trialing", True),
        ("active", True),
        ("past_due", True),
        ("incomplete", True),
        ("canceled", False),
        ("incomplete_expired", False),
        ("unpaid", False),
        ("paused", False),
    ],
)
def test_a_subscription_at_stripe_refuses_a_checkout_unless_the_webhook_ends_it_here(owner, plans, fake_stripe, stripe_status, refused):
    """A Stripe status the webhook puts on Free (canceled or expired here) is over; any other is
    a subscription the customer has, or is paying the first invoice of."""
    put_on_plan(organization_of(owner), plans["free"], stripe_customer_id="cus_1")
    fake_stripe.subscriptions["sub_1"] = subscription_object("sub_1", price="price_pro_month", status=stripe_status, customer="cus_1")
    if refused:
        with pytest.raises(ApplicationError, match="already has a subscription at Stripe"):
            _checkout(owner, plans)
    else:
        assert _checkout(owner, plans).startswith("https://checkout.stripe.com/")


def test_a_paused_stripe_subscription_that_put_the_organization_on_free_does_not_block_buying_again(owner, fake_stripe):
    """A Pro trial at Stripe (sub_1) ends without a payment method and Stripe pauses it. Confab
    maps `paused` to an ended subscription (STATUSES: expired) and puts the organization on Free.
    The owner then chooses Pro again: POST the subscription API plan=pro. Was: checkout listed the
    customer's Stripe subscriptions and refused any whose status was not canceled or
    incomplete_expired (ENDED_AT_STRIPE), so the paused sub_1 answered 400 use_portal, "This
    organization already has a subscription at Stripe (it shows here within a minute)": it never
    shows (Confab itself treats it as ended), and Confab has no way to resume it. The organization
    could never pay again. Should: what Confab treats as ended does not block a checkout (or Confab
    resumes the paused subscription)."""
    org = organization_of(owner)
    now = int(time.time())
    trial = subscription_object(
        "sub_1", price="price_pro_month", status="trialing", organization_id=org.pk, customer="cus_1", trial_end=now + 60
    )
    assert delivered_and_applied(event("customer.subscription.created", trial, created=now - 14 * 86400)) == "applied"
    paused = {**trial, "status": "paused", "created": now - 14 * 86400}
    assert delivered_and_applied(event("customer.subscription.updated", paused, created=now)) == "applied"
    with rls.privileged(reason="test: the plan in force"):
        in_force = selectors.plan_in_force(subscription=current_subscription(org)).slug
    assert (current_subscription(org).plan.slug, in_force) == ("free", "free")
    fake_stripe.subscriptions["sub_1"] = paused
    fake_stripe.requests.clear()

    response = session_client(owner).post(subscription_api(org), {"plan": "pro"}, format="json")

    resumed = [r for r in fake_stripe.requests if r["path"] == "/v1/subscriptions/sub_1/resume"]
    assert response.status_code == 201 or resumed, (response.status_code, response.json())
