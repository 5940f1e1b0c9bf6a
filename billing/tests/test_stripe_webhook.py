"""POST /billing/stripe/webhook: real signed deliveries (Stripe's header format), each event
stored once and applied once by the task, the newest state of a subscription winning."""

import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone

from accounts.tests.factories import make_user
from billing import selectors, stripe_services
from billing.models import Plan, StripeEvent, Subscription
from billing.tests.factories import current_subscription, organization_of
from billing.tests.stripe_server import event, signed, subscription_object
from config.celery import app as celery_app
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
WEBHOOK = "/billing/stripe/webhook"


def deliver(client, evt: dict, **signing):
    body, header = signed(evt, **signing)
    return client.post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def stored_events() -> list[StripeEvent]:
    with rls.privileged(reason="test"):
        return list(StripeEvent.objects.order_by("received_at"))


def subscriptions_of(organization) -> list[Subscription]:
    with rls.privileged(reason="test"):
        return list(Subscription.objects.select_related("plan").filter(organization=organization).order_by("created_at"))


def queued_tasks() -> int:
    with celery_app.connection_for_write() as conn:
        return conn.default_channel.client.llen("celery")


def process(evt: dict) -> str:
    return stripe_services.stripe_event_process(event_id=evt["id"])


@pytest.fixture
def org(fake_stripe):
    return organization_of(make_user())


def created_event(org, *, price="price_pro_month", status="active", sub="sub_1", **kwargs):
    return event("customer.subscription.created", subscription_object(sub, price=price, status=status, organization_id=org.pk), **kwargs)


def applied(client, evt: dict) -> str:
    assert deliver(client, evt).status_code == 200
    return process(evt)


def in_force(org, now=None) -> str:
    with rls.privileged(reason="test: the plan in force"):
        return selectors.plan_in_force(subscription=current_subscription(org), now=now).slug


def test_a_signed_delivery_is_stored_answered_and_queued_then_applied(client, org):
    evt = created_event(org)
    response = deliver(client, evt)
    assert response.status_code == 200 and response.json() == {"received": evt["id"]}
    [stored] = stored_events()
    assert (stored.event_id, stored.object_id, stored.processed_at) == (evt["id"], "sub_1", None)
    assert stored.object_version_at == datetime.fromtimestamp(evt["created"], tz=UTC)
    assert queued_tasks() == 1
    assert current_subscription(org).plan.slug == "free"  # nothing applied in the request

    assert process(evt) == "applied"
    current = current_subscription(org)
    assert (current.plan.slug, current.interval, current.status) == ("pro", "month", "active")
    assert (current.stripe_subscription_id, current.stripe_customer_id) == ("sub_1", "cus_test")
    assert current.current_period_end is not None
    assert stored_events()[0].processed_at is not None


@pytest.mark.parametrize("how", ["wrong secret", "body changed after signing", "no header", "stale timestamp"])
def test_a_forged_signature_gets_400_and_changes_nothing(client, org, how):
    evt = created_event(org)
    body, header = signed(evt)
    headers = {"HTTP_STRIPE_SIGNATURE": header}
    if how == "wrong secret":
        body, header = signed(evt, secret="whsec_someone_else")
        headers = {"HTTP_STRIPE_SIGNATURE": header}
    elif how == "body changed after signing":
        body = body.replace("price_pro_month", "price_ent_month")
    elif how == "no header":
        headers = {}
    else:
        body, header = signed(evt, timestamp=int(time.time()) - 3600)
        headers = {"HTTP_STRIPE_SIGNATURE": header}
    response = client.post(WEBHOOK, data=body, content_type="application/json", **headers)
    assert response.status_code == 400
    assert response.json()["message"] == "The Stripe-Signature header does not match this payload."
    assert stored_events() == [] and queued_tasks() == 0
    assert current_subscription(org).plan.slug == "free"


def test_a_signed_payload_that_is_not_an_event_gets_400(client, org):
    for payload in ('{"id": "evt_1"}', "not json", '{"id": "evt_1", "type": "x", "created": "soon", "data": {"object": {}}}'):
        header = stripe.WebhookSignature.generate_signature_header(payload, "whsec_confab_test")
        response = client.post(WEBHOOK, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
        assert response.status_code == 400 and response.json()["message"] == "The payload is not a Stripe event."
    assert stored_events() == []


def test_without_a_webhook_secret_nothing_is_accepted(client, org, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = deliver(client, created_event(org))
    assert response.status_code == 400 and response.json()["message"] == "Payment is not configured."
    assert stored_events() == []


def test_a_replayed_delivery_changes_nothing(client, org):
    evt = created_event(org)
    assert deliver(client, evt).status_code == 200
    assert process(evt) == "applied"
    before = [(s.pk, s.status, s.plan_id, s.updated_at) for s in subscriptions_of(org)]
    processed_at = stored_events()[0].processed_at
    celery_app.connection_for_write().default_channel.client.delete("celery")

    response = deliver(client, evt)  # Stripe retries with a new signature time
    assert response.status_code == 200
    assert len(stored_events()) == 1 and stored_events()[0].processed_at == processed_at
    assert queued_tasks() == 0  # an applied event is not queued again
    assert process(evt) == "duplicate"
    assert [(s.pk, s.status, s.plan_id, s.updated_at) for s in subscriptions_of(org)] == before


def test_a_replay_of_an_event_not_yet_applied_queues_it_again(client, org):
    evt = created_event(org)
    deliver(client, evt)
    deliver(client, evt)
    assert len(stored_events()) == 1 and queued_tasks() == 2
    assert process(evt) == "applied" and process(evt) == "duplicate"


def test_an_update_older_than_the_stored_state_is_ignored(client, org):
    now = int(time.time())
    newer = event(
        "customer.subscription.updated",
        subscription_object("sub_1", price="price_ent_month", organization_id=org.pk, cancel_at_period_end=True),
        created=now,
    )
    older = event(
        "customer.subscription.updated", subscription_object("sub_1", price="price_pro_month", organization_id=org.pk), created=now - 60
    )
    deliver(client, newer)
    assert process(newer) == "applied"
    deliver(client, older)  # Stripe delivered it late
    assert process(older) == "stale"
    current = current_subscription(org)
    assert (current.plan.slug, current.cancel_at_period_end) == ("enterprise", True)


def test_out_of_order_processing_keeps_the_newest_state(client, org):
    now = int(time.time())
    older = created_event(org, created=now - 30)
    newer = event(
        "customer.subscription.updated", subscription_object("sub_1", price="price_pro_year", organization_id=org.pk), created=now
    )
    deliver(client, older)
    deliver(client, newer)
    assert process(newer) == "applied"
    assert process(older) == "stale"
    current = current_subscription(org)
    assert (current.plan.slug, current.interval) == ("pro", "year")


def test_checkout_session_completed_puts_the_organization_on_the_plan(client, org, fake_stripe):
    # Checkout's subscription carries no metadata here: the session's reference names the organization.
    fake_stripe.subscriptions["sub_9"] = subscription_object("sub_9", price="price_ent_month", customer="cus_9")
    session = {
        "id": "cs_test_1",
        "object": "checkout.session",
        "mode": "subscription",
        "client_reference_id": str(org.pk),
        "customer": "cus_9",
        "subscription": "sub_9",
    }
    evt = event("checkout.session.completed", session)
    assert deliver(client, evt).status_code == 200
    assert stored_events()[0].object_id == "sub_9"
    assert process(evt) == "applied"
    current = current_subscription(org)
    assert (current.plan.slug, current.status, current.stripe_subscription_id, current.stripe_customer_id) == (
        "enterprise",
        "active",
        "sub_9",
        "cus_9",
    )
    assert [r["path"] for r in fake_stripe.requests] == ["/v1/subscriptions/sub_9"]
    [old, _] = subscriptions_of(org)
    assert (old.plan.slug, old.status) == ("free", "canceled") and old.ended_at is not None


def test_invoice_payment_failed_makes_it_past_due_and_invoice_paid_restores_it(client, org):
    now = int(time.time())
    created = created_event(org, created=now - 20)
    deliver(client, created)
    process(created)
    invoice = {"id": "in_1", "object": "invoice", "parent": {"subscription_details": {"subscription": "sub_1"}}}
    failed = event("invoice.payment_failed", invoice, created=now - 10)
    deliver(client, failed)
    assert process(failed) == "applied"
    current = current_subscription(org)
    assert current.status == "past_due" and current.past_due_since == datetime.fromtimestamp(now - 10, tz=UTC)
    paid = event("invoice.paid", {**invoice, "id": "in_2"}, created=now)
    deliver(client, paid)
    assert process(paid) == "applied"
    current = current_subscription(org)
    assert (current.status, current.past_due_since, current.plan.slug) == ("active", None, "pro")


def test_a_subscription_update_older_than_a_failed_payment_keeps_past_due(client, org):
    now = int(time.time())
    for evt in (
        created_event(org, created=now - 20),
        event("invoice.payment_failed", {"id": "in_1", "subscription": "sub_1"}, created=now),
    ):
        deliver(client, evt)
        process(evt)
    late = event(
        "customer.subscription.updated", subscription_object("sub_1", price="price_pro_year", organization_id=org.pk), created=now - 5
    )
    deliver(client, late)
    assert process(late) == "applied"
    current = current_subscription(org)
    assert (current.interval, current.status) == ("year", "past_due")  # the newer failure's status stands


def test_a_new_subscription_is_not_left_past_due_by_its_paid_invoice_arriving_first(client, org, settings):
    """The organization pays Pro through Stripe (sub_0); a renewal failed two days ago, so it is
    past due (grace: 7 days). Staff replace the failing subscription at Stripe with a new one paid
    at once with a new card (sub_1, Enterprise, active), then cancel sub_0. Stripe does not order
    deliveries: sub_1's invoice.paid (a second after sub_1 was created) is processed first. No
    current row names sub_1 yet, so `_payment_apply` answers "ignored" (and the event is done).
    Then sub_1's customer.subscription.created is applied. Was: `_apply` saw a *newer invoice
    event* stored and passed keep_status=True, so `_state_apply` kept the status of the row it
    replaces: sub_1's row started past due, with sub_0's past_due_since. Five days later the grace
    "lapsed", Free applied (and the periods task replaced sub_1's row with Free) while Stripe
    charged Enterprise every month. Should: an invoice event that changed nothing does not
    overrule the subscription's own state (sub_1 is active, nothing is overdue)."""
    now = int(time.time())
    old = event(
        "customer.subscription.created",
        subscription_object("sub_0", price="price_pro_month", organization_id=org.pk, customer="cus_1"),
        created=now - 20 * 86400,
    )
    assert applied(client, old) == "applied"
    failed = event("invoice.payment_failed", {"id": "in_0", "object": "invoice", "subscription": "sub_0"}, created=now - 2 * 86400)
    assert applied(client, failed) == "applied"
    assert current_subscription(org).status == "past_due"

    created = event(
        "customer.subscription.created",
        subscription_object("sub_1", price="price_ent_month", organization_id=org.pk, customer="cus_1"),
        created=now - 60,
    )
    paid = event("invoice.paid", {"id": "in_1", "object": "invoice", "subscription": "sub_1"}, created=now - 59)
    assert deliver(client, created).status_code == 200 and deliver(client, paid).status_code == 200
    assert process(paid) == "ignored"  # not ours yet
    assert process(created) == "applied"

    current = current_subscription(org)
    assert (current.stripe_subscription_id, current.plan.slug) == ("sub_1", "enterprise")
    after_the_old_grace = timezone.now() + timedelta(days=settings.BILLING_GRACE_DAYS)
    assert (current.status, current.past_due_since, in_force(org, after_the_old_grace)) == ("active", None, "enterprise")


def test_a_late_event_of_a_replaced_stripe_subscription_does_not_take_the_organization_back(client, org):
    """sub_0 (Pro) is replaced at Stripe by sub_1 (Enterprise), whose event is applied. Staff then
    set sub_0 to cancel at its period end: its `updated` event arrives. Was: applied, putting the
    organization back on sub_0 and Pro; sub_0's deletion at period end then moved it to Free while
    Stripe charged Enterprise. Should: stale, sub_1 stays; sub_0's deletion is then ignored."""
    now = int(time.time())
    assert applied(client, created_event(org, sub="sub_0", created=now - 20 * 86400)) == "applied"
    assert applied(client, created_event(org, sub="sub_1", price="price_ent_month", created=now - 60)) == "applied"
    cancelling = subscription_object("sub_0", price="price_pro_month", organization_id=org.pk, cancel_at_period_end=True)
    assert applied(client, event("customer.subscription.updated", cancelling, created=now - 30)) == "stale"
    deleted = subscription_object("sub_0", price="price_pro_month", status="canceled", organization_id=org.pk)
    assert applied(client, event("customer.subscription.deleted", deleted, created=now)) == "ignored"
    current = current_subscription(org)
    assert (current.stripe_subscription_id, current.plan.slug, current.status) == ("sub_1", "enterprise", "active")


def test_a_new_subscription_that_is_past_due_starts_its_own_grace(client, org):
    """sub_0 is past due since two days ago; sub_1 replaces it and its first event says past due
    (its first invoice failed). The grace counts from sub_1's failure, not sub_0's: a plan change
    within one Stripe subscription keeps what is owed, a new subscription does not inherit it."""
    now = int(time.time())
    assert applied(client, created_event(org, sub="sub_0", created=now - 20 * 86400)) == "applied"
    failed = event("invoice.payment_failed", {"id": "in_0", "object": "invoice", "subscription": "sub_0"}, created=now - 2 * 86400)
    assert applied(client, failed) == "applied"
    assert applied(client, created_event(org, sub="sub_1", price="price_ent_month", status="past_due", created=now)) == "applied"
    current = current_subscription(org)
    assert (current.stripe_subscription_id, current.status, current.past_due_since) == (
        "sub_1",
        "past_due",
        datetime.fromtimestamp(now, tz=UTC),
    )


def test_an_update_older_than_an_invoice_event_that_was_ignored_still_sets_the_status(client, org):
    """A Stripe trial's invoice.paid arrives before any event of its subscription, so it is
    ignored. The created event (trialing) is applied; then the update that ended the trial
    (active), a second older than the invoice. Only an invoice event that was applied keeps the
    status: the ignored one kept the trial's for good."""
    now = int(time.time())
    paid = event("invoice.paid", {"id": "in_1", "object": "invoice", "subscription": "sub_1"}, created=now)
    assert applied(client, paid) == "ignored"
    assert applied(client, created_event(org, status="trialing", created=now - 60)) == "applied"
    assert current_subscription(org).status == "trialing"
    ended_trial = event(
        "customer.subscription.updated", subscription_object("sub_1", price="price_pro_month", organization_id=org.pk), created=now - 1
    )
    assert applied(client, ended_trial) == "applied"
    assert current_subscription(org).status == "active"


@pytest.mark.parametrize(("stripe_status", "ended_as"), [("canceled", "canceled"), ("unpaid", "expired")])
def test_deleted_ends_the_paid_subscription_and_the_organization_is_on_free(client, org, stripe_status, ended_as):
    now = int(time.time())
    created = created_event(org, created=now - 10)
    deliver(client, created)
    process(created)
    deleted = event(
        "customer.subscription.deleted",
        subscription_object("sub_1", price="price_pro_month", status=stripe_status, organization_id=org.pk),
        created=now,
    )
    deliver(client, deleted)
    assert process(deleted) == "applied"
    free, paid, ended = subscriptions_of(org)[0], subscriptions_of(org)[1], current_subscription(org)
    assert (paid.plan.slug, paid.status) == ("pro", ended_as) and paid.ended_at is not None
    assert (ended.plan.slug, ended.status, ended.stripe_subscription_id) == ("free", "active", "")
    assert free.status == "canceled"


def test_an_unknown_price_changes_nothing(client, org):
    evt = created_event(org, price="price_not_ours")
    deliver(client, evt)
    assert process(evt) == "ignored"
    assert current_subscription(org).plan.slug == "free"


def test_a_deleted_stripe_subscription_on_a_price_staff_have_since_replaced_ends_the_plan(client, org):
    """Stripe prices cannot change, so a price rise is a new price: staff set Enterprise's monthly
    Stripe price id to the new one in admin, and existing subscribers stay on the old one
    (grandfathered) at Stripe. One of them cancels; Stripe sends customer.subscription.deleted for
    sub_1 on the old price. Was: `_state_apply` looked the price up first (`_plan_for`) and,
    finding no plan for it, answered "ignored" before it ever reached the deletion branch, which
    needs no plan at all. The event was marked processed, every later event of sub_1 was "stale"
    (a deletion is stored), the admin refuses to touch a row billed by Stripe, and the owner was
    sent to a portal with nothing in it: the organization kept Enterprise for ever, unpaid.
    Should: a deletion (or any ended status) of the organization's own Stripe subscription moves
    it to Free whatever the price."""
    now = int(time.time())
    created = event(
        "customer.subscription.created",
        subscription_object("sub_1", price="price_ent_month", organization_id=org.pk, customer="cus_1"),
        created=now - 3600,
    )
    assert applied(client, created) == "applied"
    assert current_subscription(org).plan.slug == "enterprise"
    with rls.privileged(reason="test: staff put the new Enterprise price in admin"):
        Plan.objects.filter(slug="enterprise").update(stripe_monthly_price_id="price_ent_month_2026")

    deleted = event(
        "customer.subscription.deleted",
        subscription_object("sub_1", price="price_ent_month", status="canceled", organization_id=org.pk, customer="cus_1"),
        created=now,
    )
    outcome = applied(client, deleted)

    current = current_subscription(org)
    assert (current.plan.slug, current.stripe_subscription_id) == ("free", ""), (outcome, current.plan.slug, current.status)
    assert in_force(org) == "free"


def test_the_same_event_delivered_twice_at_once_is_stored_once(org, fake_stripe):
    evt = created_event(org)
    body, header = signed(evt)
    barrier, answers = threading.Barrier(2), []

    def send():
        try:
            barrier.wait()
            answers.append(Client().post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200, 200]
    assert len(stored_events()) == 1


def test_a_real_worker_applies_the_event(client, org, celery_worker):
    evt = created_event(org, price="price_pro_year")
    assert deliver(client, evt).status_code == 200
    deadline = time.monotonic() + 20
    while stored_events()[0].processed_at is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_events()[0].processed_at is not None
    current = current_subscription(org)
    assert (current.plan.slug, current.interval, current.stripe_subscription_id) == ("pro", "year", "sub_1")


ROUNDS = 4  # more rounds, more interleavings: without the advisory lock 1 run in 3 ended on an older state


def test_racing_deliveries_of_one_subscription_end_on_its_newest_state(fake_stripe):
    """Eight updates of one subscription, each delivered and applied by its own thread (own
    connections) at once, newest first: the newest is what stays, round after round."""
    prices = ["price_pro_month", "price_ent_month", "price_pro_year"]
    for round_ in range(ROUNDS):
        org, now = organization_of(make_user()), int(time.time())
        sub = f"sub_race{round_}"
        events = [
            event(
                "customer.subscription.updated", subscription_object(sub, price=prices[n % 3], organization_id=org.pk), created=now - 8 + n
            )
            for n in range(8)
        ]
        barrier, failures = threading.Barrier(len(events)), []

        def deliver_and_apply(evt):
            try:
                barrier.wait()
                assert deliver(Client(), evt).status_code == 200
                process(evt)
            except Exception as exc:  # reported below: an assertion in a thread would be lost
                failures.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=deliver_and_apply, args=(evt,)) for evt in reversed(events)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        current = current_subscription(org)
        assert (current.plan.slug, current.interval, current.stripe_subscription_id) == ("enterprise", "month", sub)  # events[7]


@contextmanager
def broker_unreachable(tmp_path):
    """The Celery app publishes to a Redis socket nobody serves, then back to the real one."""

    def reset_pools():  # kombu keeps a producer pool per broker URL; the app picks again
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    real = celery_app.conf.broker_url
    celery_app.conf.broker_url = f"redis+socket://{tmp_path}/nobody.sock"
    reset_pools()
    try:
        yield
    finally:
        celery_app.conf.broker_url = real
        reset_pools()


def test_with_the_queue_down_the_event_is_stored_and_stripe_is_asked_to_retry(client, org, tmp_path):
    evt = created_event(org)
    with broker_unreachable(tmp_path):
        response = deliver(client, evt)
    assert response.status_code == 503 and response.json()["message"] == "The event could not be queued; send it again."
    [stored] = stored_events()
    assert stored.processed_at is None
    assert deliver(client, evt).status_code == 200  # Stripe's retry queues it
    assert queued_tasks() == 1 and len(stored_events()) == 1


def test_migration_0003_reverses_with_an_unapplied_event_and_forwards_again(client, org):
    deliver(client, created_event(org))
    received = stored_events()[0].received_at
    executor = MigrationExecutor(connections["owner"])
    leaf = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "billing"]
    executor.migrate([("billing", "0002_seed_plans_and_free_subscriptions")])
    try:
        with connections["owner"].cursor() as cur:
            cur.execute("SELECT processed_at FROM billing_stripeevent")
            assert cur.fetchall() == [(received,)]  # the unapplied event keeps its arrival time
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaf)
    assert [e.received_at for e in stored_events()] == [received]
