"""Attack tests on billing, each a bug an adversarial review found (it failed before its fix): a
plan Stripe charges for changed or cancelled here without Stripe; a past-due organization
regaining a paid plan by "downgrading"; a webhook lost when it raced a plan change; a deleted
Stripe subscription revived by an event of the same second; signed but malformed webhooks
answered 500; a NUL in checkout's plan answered 500."""

import json
import threading
import time
from datetime import timedelta

import pytest
import stripe
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership
from accounts.tests.factories import make_user
from accounts.tests.test_api import session_client
from billing import selectors, services, stripe_services
from billing.models import StripeEvent, Subscription
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from billing.tests.stripe_server import WEBHOOK_SECRET, event, signed, subscription_object
from config.db import rls
from config.tests.races import waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)
WEBHOOK = "/billing/stripe/webhook"


def deliver(evt: dict, client=None):
    body, header = signed(evt)
    client = client or Client(raise_request_exception=False)
    return client.post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def deliver_raw(payload: str):
    header = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    return Client(raise_request_exception=False).post(WEBHOOK, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def process(evt: dict) -> str:
    return stripe_services.stripe_event_process(event_id=evt["id"])


def delivered_and_applied(evt: dict) -> str:
    assert deliver(evt).status_code == 200
    return process(evt)


@pytest.fixture
def owner(fake_stripe):
    user = make_user()
    return user, organization_of(user)


def subscription_created(org, *, sub="sub_1", price="price_ent_month", created=None, status="active"):
    obj = subscription_object(sub, price=price, status=status, organization_id=org.pk, customer="cus_1")
    return event("customer.subscription.created", obj, created=created or int(time.time()))


def on_stripe_enterprise(org, *, created=None):
    """The organization pays for Enterprise through Stripe (sub_1), applied by the real webhook path."""
    assert delivered_and_applied(subscription_created(org, created=created)) == "applied"
    current = current_subscription(org)
    assert (current.plan.slug, current.stripe_subscription_id, current.status) == ("enterprise", "sub_1", "active")
    return current


def subscription_api(org) -> str:
    return reverse("billing-api:subscription", args=[org.pk])


# --- 1. Webhooks ----------------------------------------------------------------------


def _nul_in_customer_name(evt):
    evt["data"]["object"]["customer_name"] = "Acme\u0000Corp"  # a NUL in text the customer typed
    return json.dumps(evt)


def _created_zero(evt):
    evt["created"] = 0
    return json.dumps(evt)


def _created_far_future(evt):
    evt["created"] = 10**15
    return json.dumps(evt)


def _created_infinity(evt):
    return json.dumps(evt).replace(f'"created": {evt["created"]}', '"created": Infinity')


def _type_too_long(evt):
    evt["type"] = "invoice." + "x" * 200
    return json.dumps(evt)


def _id_too_long(evt):
    evt["id"] = "evt_" + "x" * 300
    return json.dumps(evt)


def _nested_too_deep(evt):
    return json.dumps(evt)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(
    "malform",
    [_nul_in_customer_name, _created_zero, _created_far_future, _created_infinity, _type_too_long, _id_too_long, _nested_too_deep],
)
def test_a_signed_but_malformed_event_gets_a_4xx_not_a_500(owner, malform):
    """Every bad delivery gets a 4xx (or a 200 that changes nothing), never a 500: a 500 makes
    Stripe retry the same body for days and finally disable the endpoint."""
    evt = event("invoice.paid", {"id": "in_1", "object": "invoice", "subscription": "sub_1"})
    response = deliver_raw(malform(evt))
    assert response.status_code < 500, response.content[:300]


def test_a_deleted_subscription_is_not_revived_by_an_update_of_the_same_second(owner):
    """Stripe does not order deliveries, and two events of one subscription often share a
    second. A subscription Stripe deleted never comes back, so a late `updated` of that second
    must not put the organization on the paid plan again (nothing pays for it)."""
    _, org = owner
    now = int(time.time())
    assert delivered_and_applied(subscription_created(org, price="price_pro_month", created=now - 60)) == "applied"
    deleted = event(
        "customer.subscription.deleted",
        subscription_object("sub_1", price="price_pro_month", status="canceled", organization_id=org.pk, customer="cus_1"),
        created=now,
    )
    updated = event(
        "customer.subscription.updated",
        subscription_object("sub_1", price="price_pro_month", status="active", organization_id=org.pk, customer="cus_1"),
        created=now,
    )
    assert delivered_and_applied(deleted) == "applied"
    assert current_subscription(org).plan.slug == "free"
    delivered_and_applied(updated)  # delivered after the deletion
    current = current_subscription(org)
    assert (current.plan.slug, current.stripe_subscription_id) == ("free", ""), "a deleted Stripe subscription granted Pro again"


# --- Races between a webhook and a plan change ---------------------------------------


def _process_while_the_row_is_replaced(org, evt, *, to_plan):
    """A plan change (subscription_plan_set's own steps: lock the current row, replace it) holds
    the row while the event is processed in another thread; the change commits once the event's
    transaction is seen waiting on it (pg_locks), never on a sleep."""
    outcome = {}

    def apply():
        try:
            outcome["result"] = process(evt)
        except Exception as exc:  # reported by the test
            outcome["error"] = exc
        finally:
            connections.close_all()

    with rls.privileged(reason="test: an owner's plan change holds the row"):
        current = services.lock_current(org.pk)
        services._replace(current, plan=to_plan, interval="month", status="active", now=timezone.now())
        worker = threading.Thread(target=apply)
        worker.start()
        deadline = time.monotonic() + 20
        while waiting_locks() == 0 and worker.is_alive():
            assert time.monotonic() < deadline, "the event never waited on the row"
            time.sleep(0.01)
    worker.join(20)
    return outcome


def test_a_failed_payment_that_races_a_plan_change_is_not_lost(owner, plans):
    """invoice.payment_failed arrives while the owner switches Enterprise -> Pro (the new row keeps
    sub_1). The failure must still make the subscription past due; instead `_payment_apply`
    finds no current row (the one it waited on is no longer current) and answers "ignored",
    and the event is marked processed: the failed payment is forgotten for good."""
    _, org = owner
    now = int(time.time())
    on_stripe_enterprise(org, created=now - 60)
    failed = event("invoice.payment_failed", {"id": "in_1", "object": "invoice", "subscription": "sub_1"}, created=now)
    assert deliver(failed).status_code == 200
    outcome = _process_while_the_row_is_replaced(org, failed, to_plan=plans["pro"])
    assert "error" not in outcome, outcome
    current = current_subscription(org)
    assert (current.stripe_subscription_id, current.status) == ("sub_1", "past_due"), outcome


def test_a_subscription_event_that_races_a_plan_change_is_applied_not_lost(owner, plans):
    """customer.subscription.updated (the customer set cancel_at_period_end in the portal) is
    processed while an owner's change replaces the current row. `_locked_current` uses .get(),
    which finds nothing once the row it waited on is no longer current: the task dies with
    Subscription.DoesNotExist (not retried: autoretry covers ApplicationError only), Stripe got
    its 200 long ago, and the event is never applied."""
    _, org = owner
    now = int(time.time())
    on_stripe_enterprise(org, created=now - 60)
    updated = event(
        "customer.subscription.updated",
        subscription_object("sub_1", price="price_ent_month", organization_id=org.pk, customer="cus_1", cancel_at_period_end=True),
        created=now,
    )
    assert deliver(updated).status_code == 200
    outcome = _process_while_the_row_is_replaced(org, updated, to_plan=plans["pro"])
    assert "error" not in outcome, outcome
    with rls.privileged(reason="test"):
        assert StripeEvent.objects.get(event_id=updated["id"]).processed_at is not None
    assert current_subscription(org).cancel_at_period_end is True


# --- 2. Plan changes against a Stripe subscription ------------------------------------


def _stripe_calls_on(fake_stripe, subscription_id):
    return [r for r in fake_stripe.requests if r["path"] == f"/v1/subscriptions/{subscription_id}" and r["method"] in ("POST", "DELETE")]


def test_switching_a_stripe_paid_plan_to_free_now_stops_stripe_billing(owner, fake_stripe):
    """An owner paying Enterprise through Stripe chooses "Switch to Free, now" (the page offers
    it). Confab puts the organization on Free and forgets sub_1, but never tells Stripe: Stripe
    keeps charging $200 a month for a plan the organization no longer has. Correct: cancel the
    Stripe subscription (or refuse and send the owner to the portal)."""
    user, org = owner
    on_stripe_enterprise(org)
    fake_stripe.requests.clear()
    response = session_client(user).post(subscription_api(org), {"plan": "free", "immediately": True}, format="json")
    refused_to_portal = response.status_code in (400, 409) and response.json()["extra"].get("code") == "use_portal"
    assert refused_to_portal or _stripe_calls_on(fake_stripe, "sub_1"), (
        response.status_code,
        current_subscription(org).plan.slug,
        fake_stripe.requests,
    )


def test_downgrading_a_stripe_paid_plan_changes_the_stripe_price_too(owner, fake_stripe, plans):
    """Enterprise -> Pro now through the API: Confab says Pro while Stripe still bills the
    Enterprise price on sub_1 (and its next renewal event puts Enterprise back)."""
    user, org = owner
    on_stripe_enterprise(org)
    fake_stripe.requests.clear()
    response = session_client(user).post(subscription_api(org), {"plan": "pro", "immediately": True}, format="json")
    refused_to_portal = response.status_code in (400, 409) and response.json()["extra"].get("code") == "use_portal"
    assert refused_to_portal or _stripe_calls_on(fake_stripe, "sub_1"), (response.status_code, current_subscription(org).plan.slug)


def test_cancelling_a_stripe_paid_plan_tells_stripe(owner, fake_stripe):
    """ "Cancel at period end" on the page sets a flag in Confab only; Stripe renews and charges
    at the period's end (and its renewal event clears the flag)."""
    user, org = owner
    on_stripe_enterprise(org)
    fake_stripe.requests.clear()
    client = Client(raise_request_exception=False)
    client.force_login(user)
    response = client.post(reverse("billing:cancel", args=[org.pk]))
    refused = response.status_code >= 400 and not current_subscription(org).cancel_at_period_end
    assert refused or _stripe_calls_on(fake_stripe, "sub_1"), (response.status_code, fake_stripe.requests)


def test_a_past_due_organization_cannot_regain_a_paid_plan_by_downgrading(owner, plans, settings):
    """Enterprise through Stripe, the payment failed 8 days ago: the grace period (7 days) is
    over and the Free limits apply. The owner then "downgrades" to Pro now: Pro ranks below
    Enterprise, so no checkout, and `_replace` starts the new row `active` with no
    past_due_since: the organization has Pro's limits again without anything being paid."""
    user, org = owner
    now = int(time.time())
    on_stripe_enterprise(org, created=now - 20 * 86400)
    failed = event(
        "invoice.payment_failed",
        {"id": "in_1", "object": "invoice", "subscription": "sub_1"},
        created=now - (settings.BILLING_GRACE_DAYS + 1) * 86400,
    )
    assert delivered_and_applied(failed) == "applied"
    assert selectors.plan_in_force(subscription=current_subscription(org)).slug == "free"  # the grace is over

    response = session_client(user).post(subscription_api(org), {"plan": "pro", "immediately": True}, format="json")
    in_force = selectors.plan_in_force(subscription=current_subscription(org))
    assert in_force.slug == "free", (response.status_code, response.json().get("plan", {}).get("slug"), current_subscription(org).status)


def test_a_past_due_plan_staff_set_cannot_be_swapped_for_another_paid_plan(owner, plans, settings):
    """The same without Stripe (a plan staff put in place, its payment overdue past the grace):
    only the Free plan may be chosen until it is paid."""
    user, org = owner
    overdue = timezone.now() - timedelta(days=settings.BILLING_GRACE_DAYS + 1)
    put_on_plan(org, plans["enterprise"], status=Subscription.Status.PAST_DUE, past_due_since=overdue)
    response = session_client(user).post(subscription_api(org), {"plan": "pro", "immediately": True}, format="json")
    assert (response.status_code, response.json()["extra"]["code"]) == (400, "past_due"), response.json()
    assert selectors.plan_in_force(subscription=current_subscription(org)).slug == "free"
    assert session_client(user).post(subscription_api(org), {"plan": "free", "immediately": True}, format="json").status_code == 200


# --- 5. Inputs -------------------------------------------------------------------------


def test_a_nul_in_the_checkout_plan_gets_a_message_not_a_500(owner):
    user, org = owner
    client = Client(raise_request_exception=False)
    client.force_login(user)
    response = client.post("/billing/checkout/", {"organization": str(org.pk), "plan": "pro\x00", "interval": "month"})
    assert response.status_code == 302 and response["Location"] == f"/billing/?org={org.pk}", response.status_code  # its own page


# --- What held (kept as passing checks) -----------------------------------------------


def test_held_other_tenants_subscription_is_the_same_404_as_a_random_id(owner):
    user, _ = owner
    other = organization_of(make_user())
    client = session_client(user)
    import uuid

    a = client.get(subscription_api(other))
    b = client.get(reverse("billing-api:subscription", args=[uuid.uuid4()]))
    assert a.status_code == b.status_code == 404 and a.json() == b.json()
    a = client.post(subscription_api(other), {"plan": "free"}, format="json")
    assert a.status_code == 404 and a.json() == b.json()


def test_held_member_and_read_only_key_cannot_change_plan(owner, plans):
    from accounts.tests.test_api import key_client

    user, org = owner
    member = make_user()
    with rls.privileged(reason="test"):
        Membership.objects.create(user=member, organization=org, role=Membership.Role.MEMBER)
    assert session_client(member).post(subscription_api(org), {"plan": "pro"}, format="json").status_code == 403
    ro = key_client(user, scopes=("billing:read",))
    assert ro.post(subscription_api(org), {"plan": "pro"}, format="json").status_code == 403
    with rls.privileged(reason="test"):
        plans["enterprise"].is_active = False
        plans["enterprise"].save()
    assert session_client(user).post(subscription_api(org), {"plan": "enterprise"}, format="json").status_code == 404
    assert current_subscription(org).plan.slug == "free"


def test_held_huge_unsigned_body_and_unknown_types(owner):
    _, org = owner
    big = Client(raise_request_exception=False).post(WEBHOOK, data="{" + " " * 5_000_000 + "}", content_type="application/json")
    assert 400 <= big.status_code < 500
    unknown = event("customer.created", {"id": "cus_x"})
    assert delivered_and_applied(unknown) == "ignored"
    other = organization_of(make_user())
    put_on_plan(other, current_subscription(other).plan, stripe_customer_id="cus_other")
    # no metadata, a customer nobody has: nothing changes
    evt = event("customer.subscription.created", subscription_object("sub_z", price="price_pro_month", customer="cus_nobody"))
    assert delivered_and_applied(evt) == "ignored"
    assert current_subscription(org).plan.slug == "free" and current_subscription(other).plan.slug == "free"
