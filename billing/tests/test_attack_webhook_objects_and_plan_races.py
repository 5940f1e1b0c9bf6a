"""Billing as an attacker finds it (review of 2026-12-02): signed Stripe events whose object
would not store (a 500 Stripe retries for days), a trial turned into a paid plan nobody pays
for, and a downgrade racing the checkout's webhook. Each test here failed before its fix."""

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

from accounts.tests.factories import make_user
from accounts.tests.test_api import session_client
from billing import selectors, services, stripe_services
from billing.tests.factories import current_subscription, organization_of, put_on_plan
from billing.tests.stripe_server import WEBHOOK_SECRET, event, subscription_object
from config.db import rls
from config.tests.races import waiting_locks

pytestmark = pytest.mark.django_db(transaction=True)
WEBHOOK = "/billing/stripe/webhook"


def deliver_raw(payload: str):
    header = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    return Client(raise_request_exception=False).post(WEBHOOK, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def subscription_api(org) -> str:
    return reverse("billing-api:subscription", args=[org.pk])


# --- Webhooks: signed but malformed objects ------------------------------------------------


def _subscription_id_too_long(org):
    obj = subscription_object("sub_" + "x" * 300, price="price_pro_month", organization_id=org.pk)
    return event("customer.subscription.updated", obj)


def _unhandled_object_id_too_long(org):
    return event("customer.created", {"id": "cus_" + "x" * 300, "object": "customer"})


def _invoice_subscription_too_long(org):
    return event("invoice.paid", {"id": "in_1", "object": "invoice", "subscription": "sub_" + "x" * 300})


def _invoice_parent_not_an_object(org):
    return event("invoice.paid", {"id": "in_1", "object": "invoice", "parent": "sub_1"})


def _invoice_subscription_details_not_an_object(org):
    return event("invoice.payment_failed", {"id": "in_1", "object": "invoice", "parent": {"subscription_details": ["sub_1"]}})


@pytest.mark.parametrize(
    "make",
    [
        _subscription_id_too_long,
        _unhandled_object_id_too_long,
        _invoice_subscription_too_long,
        _invoice_parent_not_an_object,
        _invoice_subscription_details_not_an_object,
    ],
)
def test_a_signed_event_whose_object_is_malformed_gets_a_4xx_not_a_500(fake_stripe, make):
    """A signed delivery whose object id is longer than StripeEvent.object_id (255) or whose
    invoice `parent` / `subscription_details` is not an object: `_parse` checks only the event's
    own id, type and created, so `stripe_event_record` raises DataError (value too long) or
    AttributeError ('str' object has no attribute 'get') and the webhook answers 500, which Stripe
    retries for days and then disables the endpoint. Expected: a 4xx (bad_payload), or a 200 that
    changes nothing, as for the malformed events test_attack_billing already covers."""
    org = organization_of(make_user())
    response = deliver_raw(json.dumps(make(org)))
    assert response.status_code < 500, response.content[:300]


# --- Plan changes -------------------------------------------------------------------------


def test_a_trial_cannot_be_turned_into_a_paid_plan_nobody_pays_for_by_downgrading(fake_stripe, plans):
    """Staff put an organization on Enterprise and give it a 7-day trial (admin's "extend trial").
    With payment configured, the owner then asks for Pro now (POST the subscription API, plan=pro,
    immediately=true). Pro ranks below Enterprise, so no checkout: `subscription_plan_set` starts a
    new row `active` with a month's period and no trial end, and the periods task renews it every
    month (no Stripe subscription): the organization keeps a paid plan for ever without paying,
    where the trial would have ended on Free in 7 days. Expected: refused (a trial's plan is changed
    for another paid plan only through checkout), or the trial, and its end, kept."""
    owner = make_user()
    org = organization_of(owner)
    with rls.privileged(reason="test: staff grant Enterprise and a trial in admin"):
        services.subscription_plan_set(organization=org, plan=plans["enterprise"])
        trial = services.subscription_trial_extend(subscription=current_subscription(org), days=7)
    trial_end = trial.trial_end
    assert selectors.plan_in_force(subscription=current_subscription(org), now=trial_end + timedelta(hours=1)).slug == "free"

    response = session_client(owner).post(subscription_api(org), {"plan": "pro", "immediately": True}, format="json")
    after_trial = trial_end + timedelta(days=1)
    services.subscription_periods_advance(now=after_trial)
    in_force = selectors.plan_in_force(subscription=current_subscription(org), now=after_trial)
    assert in_force.slug == "free", (response.status_code, response.json(), current_subscription(org).status)


def test_a_downgrade_racing_the_checkout_webhook_does_not_drop_the_stripe_subscription(fake_stripe, plans):
    """An organization on a Pro plan staff granted (no Stripe) buys Enterprise at Stripe Checkout;
    while the webhook's task puts it in place (Enterprise, billed by Stripe as sub_1: it holds the
    row lock), another admin clicks "Switch to Free, now". `subscription_change` checks
    `refuse_if_billed_by_stripe` on the row it read before the lock (Pro, no Stripe), then
    `subscription_plan_set` waits for the lock, reads the new Enterprise row and replaces it with
    Free, forgetting sub_1 without telling Stripe: Stripe charges $200 a month for a plan the
    organization no longer has. Expected: the check repeated under the lock (refused: use_portal),
    or Stripe told."""
    owner = make_user()
    org = organization_of(owner)
    put_on_plan(org, plans["pro"], current_period_end=timezone.now() + timedelta(days=20))
    outcome = {}

    def downgrade():
        try:
            response = session_client(owner).post(subscription_api(org), {"plan": "free", "immediately": True}, format="json")
            outcome["status"] = response.status_code
            outcome["body"] = response.json()
        except Exception as exc:  # reported by the test
            outcome["error"] = exc
        finally:
            connections.close_all()

    with rls.privileged(reason="test: the checkout webhook's task applies Enterprise on sub_1"):
        current = services.lock_current(org.pk)
        paid = services._replace(current, plan=plans["enterprise"], interval="month", status="active", now=timezone.now())
        paid.stripe_subscription_id, paid.stripe_customer_id = "sub_1", "cus_1"
        paid.save(update_fields=["stripe_subscription_id", "stripe_customer_id"])
        worker = threading.Thread(target=downgrade)
        worker.start()
        deadline = time.monotonic() + 20
        while waiting_locks() == 0 and worker.is_alive():
            assert time.monotonic() < deadline, "the downgrade never waited on the row"
            time.sleep(0.01)
    worker.join(20)
    assert "error" not in outcome, outcome
    current = current_subscription(org)
    stripe_told = [r for r in fake_stripe.requests if r["path"] == "/v1/subscriptions/sub_1" and r["method"] in ("POST", "DELETE")]
    assert (current.plan.slug, current.stripe_subscription_id) == ("enterprise", "sub_1") or stripe_told, (
        outcome,
        current.plan.slug,
        current.stripe_subscription_id,
    )


def _customer_too_long(org):
    return {**subscription_object("sub_1", price="price_pro_month", organization_id=org.pk), "customer": "cus_" + "x" * 200}


def _period_past_9999(org):
    obj = subscription_object("sub_1", price="price_pro_month", organization_id=org.pk)
    obj["items"]["data"][0]["current_period_end"] = 10**12
    return obj


def _status_not_text(org):
    return {**subscription_object("sub_1", price="price_pro_month", organization_id=org.pk), "status": ["active"]}


def _metadata_not_an_object(org):
    return {**subscription_object("sub_1", price="price_pro_month"), "metadata": ["organization_id"]}


@pytest.mark.parametrize("make", [_customer_too_long, _period_past_9999, _status_not_text, _metadata_not_an_object])
def test_a_signed_subscription_no_row_can_hold_is_ignored_not_an_error_on_every_retry(fake_stripe, plans, make, caplog):
    """A signed customer.subscription.updated whose customer id is longer than its column (100),
    whose period ends past year 9999, whose status is not text, or whose metadata is not an
    object: the webhook stored it (200) and its task raised on every retry (DataError, an
    overflow, an unhashable list, 'list' object has no attribute 'get'), the event unprocessed for
    good. Now it is processed as "ignored" with a warning, and the subscription is unchanged."""
    org = organization_of(make_user())
    before = current_subscription(org)
    evt = event("customer.subscription.updated", make(org))
    body = json.dumps(evt)
    header = stripe.WebhookSignature.generate_signature_header(body, WEBHOOK_SECRET)
    assert Client().post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header).status_code == 200
    assert stripe_services.stripe_event_process(event_id=evt["id"]) == "ignored"
    after = current_subscription(org)
    assert (after.pk, after.plan_id, after.stripe_subscription_id) == (before.pk, before.plan_id, before.stripe_subscription_id)
