"""Payment through Stripe: a Checkout session for a plan change, a Customer Portal link, and
webhook events stored exactly once and applied by a task, the newest object state winning.

Ordering: every handled event names one Stripe subscription (`StripeEvent.object_id`) and
carries the time Stripe created it (`object_version_at`). Subscription events and a
completed checkout carry the whole state; invoice events only the payment outcome. So a
state event is stale when a newer state event for the same subscription is stored, and
an invoice event is stale when any newer handled event is stored (subscription events
carry the status too); a state event older than an invoice event applied to its subscription
keeps the status. Events of one subscription are applied one at a time (a transaction-level
advisory lock).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import stripe
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as QueueUnavailable
from redis.exceptions import LockError

from accounts.models import Organization, User
from billing import selectors, services
from billing.models import CURRENT_STATUSES, Plan, StripeEvent, Subscription
from config.cache import REDIS_ERRORS, redis_client
from config.db import rls
from config.errors import ApplicationError
from config.text import json_clean

logger = logging.getLogger("confab.billing.stripe")

DELETED = "customer.subscription.deleted"
STATE_EVENTS = frozenset(
    {"checkout.session.completed", "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"}
)
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
HANDLED_EVENTS = STATE_EVENTS | INVOICE_EVENTS
# Stripe's subscription statuses in ours; "incomplete" (first payment pending) changes nothing.
STATUSES = {
    "trialing": Subscription.Status.TRIALING,
    "active": Subscription.Status.ACTIVE,
    "past_due": Subscription.Status.PAST_DUE,
    "canceled": Subscription.Status.CANCELED,
    "unpaid": Subscription.Status.EXPIRED,
    "incomplete_expired": Subscription.Status.EXPIRED,
    "paused": Subscription.Status.EXPIRED,
}
# Stripe subscriptions that are over here (the organization is on Free): they block no checkout.
# Any other status is one the customer has (or is paying for, or paying the first invoice of).
ENDED_AT_STRIPE = frozenset(stripe_status for stripe_status, ours in STATUSES.items() if ours not in CURRENT_STATUSES)


STRIPE_TIMEOUT_SECONDS = 20
# One checkout at a time per organization: held across its Stripe calls (a Redis lock: no database
# connection is held while Stripe answers), renewed before the last, which it outlasts with its
# retries (3 × 20 s); a second checkout waits this long for it, then is refused.
CHECKOUT_LOCK_SECONDS = 90
CHECKOUT_WAIT_SECONDS = 15


def _not_configured() -> ApplicationError:
    return ApplicationError("Payment is not configured.", {"code": "payment_not_configured"})


def stripe_client() -> stripe.StripeClient:
    if not selectors.payment_configured():
        raise _not_configured()
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=2,
        http_client=stripe.new_default_http_client(timeout=STRIPE_TIMEOUT_SECONDS),  # the library's default waits 80 s
    )


def _stripe_call(method, *args, tolerate: tuple[type[stripe.StripeError], ...] = (), **kwargs):
    """Call Stripe; its failures become one sentence for the user (the detail is logged), but
    for those the caller `tolerate`s: None. The thread's database connections go back to the
    pool first: none is held while Stripe answers."""
    rls.connection_release()
    try:
        return method(*args, **kwargs)
    except tolerate:
        return None
    except stripe.StripeError as exc:
        # Not its message: one quoting the request (a key, a customer's details) would be written down.
        logger.warning(
            "Stripe call failed: %s (HTTP %s, code %s, request %s)", type(exc).__name__, exc.http_status, exc.code, exc.request_id
        )
        raise ApplicationError(
            "The payment provider could not complete the request; try again in a moment.", {"code": "stripe_error"}, status_code=502
        ) from exc


# --- Checkout and the Customer Portal ----------------------------------------------


def _customer_id(*, client: stripe.StripeClient, actor: User, organization: Organization, subscription: Subscription) -> str:
    """The organization's Stripe customer, created once (the idempotency key covers a double click)."""
    if subscription.stripe_customer_id:
        return subscription.stripe_customer_id
    customer = _stripe_call(
        client.v1.customers.create,
        params={"name": organization.name, "email": actor.email, "metadata": {"organization_id": str(organization.pk)}},
        options={"idempotency_key": f"confab-customer-{organization.pk}"},
    )
    with rls.atomic_as(actor.pk):
        Subscription.objects.filter(pk=subscription.pk).update(stripe_customer_id=customer.id, updated_at=timezone.now())
    return customer.id


def checkout_session_create(*, actor: User, organization: Organization, plan: Plan, interval: str, return_url: str) -> str:
    """An owner or admin starts paying for `plan`: the URL of a Stripe Checkout page. The
    subscription changes when Stripe's webhook says the checkout completed. Opens its own short
    transactions: none is held while Stripe answers (the caller holds none either)."""
    client = stripe_client()
    with rls.atomic_as(actor.pk):
        services._require_manager(actor, organization)
    if interval not in Subscription.Interval.values:
        raise ApplicationError("Choose a monthly or yearly interval.", {"code": "invalid", "field": "interval"})
    price = plan.stripe_yearly_price_id if interval == Subscription.Interval.YEAR else plan.stripe_monthly_price_id
    if plan.is_free or not plan.is_active or not price:
        raise ApplicationError(f"The {plan.name} plan cannot be bought online with {interval}ly billing.", {"code": "plan_not_for_sale"})
    # At most one open Checkout per organization, or two tabs (a double click, a second try) could
    # each be paid and start two subscriptions. One checkout is made at a time per organization:
    # a subscription the customer already has at Stripe (its webhook not applied yet) refuses it;
    # an open checkout is expired, so only the newest can be paid.
    with _one_checkout_at_a_time(organization) as lock:
        with rls.atomic_as(actor.pk):
            current = selectors.subscription_current(organization_id=organization.pk)  # read under the lock: the customer made before it
            services.refuse_if_billed_by_stripe(current)
            trial = plan.trial_days and not selectors.organization_has_trialed(organization_id=organization.pk)
        customer = _customer_id(client=client, actor=actor, organization=organization, subscription=current)
        _refuse_if_subscribed_at_stripe(client, customer)
        _open_checkouts_expire(client, customer)
        metadata = {"organization_id": str(organization.pk), "plan": plan.slug}
        # Subscription events then name the organization even before the checkout event arrives.
        subscription_data = {"metadata": metadata}
        if trial:
            subscription_data["trial_period_days"] = plan.trial_days  # the plan's trial, once an organization
        _lock_renewed(lock)
        session = _stripe_call(
            client.v1.checkout.sessions.create,
            params={
                "mode": "subscription",
                "customer": customer,
                "client_reference_id": str(organization.pk),
                "line_items": [{"price": price, "quantity": 1}],
                "success_url": _with_query(return_url, checkout="success"),
                "cancel_url": _with_query(return_url, checkout="canceled"),
                "metadata": metadata,
                "subscription_data": subscription_data,
            },
        )
    return session.url


def _checkout_in_progress() -> ApplicationError:
    return ApplicationError(
        "A checkout for this organization is being prepared in another window; try again in a moment.",
        {"code": "checkout_in_progress"},
        status_code=409,
    )


def _checkout_unavailable() -> ApplicationError:
    return ApplicationError("Checkout is unavailable for a moment; try again shortly.", {"code": "checkout_unavailable"}, status_code=503)


@contextmanager
def _one_checkout_at_a_time(organization: Organization):
    lock = redis_client().lock(f"billing:checkout:{organization.pk}", timeout=CHECKOUT_LOCK_SECONDS, blocking_timeout=CHECKOUT_WAIT_SECONDS)
    rls.connection_release()  # none held while waiting for another window's checkout
    try:
        acquired = lock.acquire()
    except REDIS_ERRORS as exc:  # without the lock two tabs could each start a subscription
        raise _checkout_unavailable() from exc
    if not acquired:
        raise _checkout_in_progress()
    try:
        yield lock
    finally:
        try:
            lock.release()
        except (LockError, *REDIS_ERRORS):
            pass  # lapsed, or Redis gone: it expires by itself


def _lock_renewed(lock) -> None:
    """The lock back to its whole time before the call that opens the checkout; lapsed and taken
    by another checkout (Stripe slow past it), this one gives way to the newer."""
    try:
        lock.reacquire()
    except LockError as exc:
        raise _checkout_in_progress() from exc
    except REDIS_ERRORS as exc:
        raise _checkout_unavailable() from exc


def _with_query(url: str, **params: str) -> str:
    """The URL with `params` added to whatever query it has (the billing page names its organization)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), *params.items()])))


def _already_subscribed() -> ApplicationError:
    return ApplicationError(
        "This organization already has a subscription at Stripe (it shows here within a minute): change it in the billing portal.",
        {"code": "use_portal"},
    )


def _refuse_if_subscribed_at_stripe(client: stripe.StripeClient, customer: str) -> None:
    subscriptions = _stripe_call(client.v1.subscriptions.list, params={"customer": customer, "status": "all", "limit": 100})
    if any(subscription.status not in ENDED_AT_STRIPE for subscription in subscriptions.data):
        raise _already_subscribed()


def _open_checkouts_expire(client: stripe.StripeClient, customer: str) -> None:
    """Expire the customer's open Checkout sessions; one paid meanwhile refuses the new one."""
    sessions = _stripe_call(client.v1.checkout.sessions.list, params={"customer": customer, "status": "open", "limit": 100})
    for session in sessions.data:
        expired = _stripe_call(client.v1.checkout.sessions.expire, session.id, tolerate=(stripe.InvalidRequestError,))
        # None: no longer open, so paid meanwhile (a subscription now) or expired by itself.
        if expired is None and _stripe_call(client.v1.checkout.sessions.retrieve, session.id).status == "complete":
            raise _already_subscribed()


def subscription_change_or_checkout(
    *, actor: User, organization: Organization, plan: Plan, interval: str, immediately: bool, return_url: str
) -> Subscription | str:
    """`services.subscription_change`, except that a paid upgrade (or a paid plan during a
    trial) with payment configured answers the URL of the Stripe Checkout page that buys it (the plan changes on the webhook)."""
    try:
        with rls.atomic_as(actor.pk):
            return services.subscription_change(
                actor=actor, organization=organization, plan=plan, interval=interval, immediately=immediately
            )
    except services.CheckoutRequired:
        return checkout_session_create(actor=actor, organization=organization, plan=plan, interval=interval, return_url=return_url)


def portal_session_create(*, actor: User, organization: Organization, return_url: str) -> str:
    """An owner or admin manages payment methods, invoices and the paid plan at Stripe."""
    client = stripe_client()
    with rls.atomic_as(actor.pk):
        services._require_manager(actor, organization)
        current = selectors.subscription_current(organization_id=organization.pk)
    if not current.stripe_customer_id:
        raise ApplicationError("There is no payment account yet: choose a paid plan first.", {"code": "no_customer"})
    session = _stripe_call(
        client.v1.billing_portal.sessions.create, params={"customer": current.stripe_customer_id, "return_url": return_url}
    )
    return session.url


# --- Webhook events --------------------------------------------------------------------


def _id(value) -> str:
    """An id Stripe may send as a string or as an expanded object; anything else is none."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _subscription_id_of(event_type: str, obj: dict) -> str:
    if event_type.startswith("customer.subscription."):
        return _id(obj.get("id"))
    if event_type.startswith("invoice."):
        # API versions from 2025-03-31 name it under parent.subscription_details.
        details = _object(_object(obj.get("parent")).get("subscription_details"))
        return _id(obj.get("subscription")) or _id(details.get("subscription"))
    return _id(obj.get("subscription"))


def _object_id(event: dict) -> str:
    """What StripeEvent.object_id keeps: the subscription a handled event is about, else the object's own id."""
    obj = event["data"]["object"]
    return _subscription_id_of(event["type"], obj) if event["type"] in HANDLED_EVENTS else _id(obj.get("id"))


EVENT_ID_MAX = StripeEvent._meta.get_field("event_id").max_length
OBJECT_ID_MAX = StripeEvent._meta.get_field("object_id").max_length
EVENT_TYPE_MAX = StripeEvent._meta.get_field("type").max_length
CREATED_MAX = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())  # a datetime can hold it


def _moment(timestamp) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), tz=UTC) if timestamp else None


def _parse(payload: bytes, signature: str) -> dict:
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise _not_configured()
    try:
        stripe.Webhook.construct_event(payload, signature, secret)
        # Signed is not well-formed: what would not store (a NUL in a customer's name, an id
        # longer than its column, a time before 1970 or past 9999, JSON too deep) is a 400 here,
        # not a 500 that Stripe would retry for days.
        event = json_clean(json.loads(payload))
        obj = event["data"]["object"]
        if not (isinstance(event["id"], str) and isinstance(event["type"], str) and isinstance(obj, dict)):
            raise ValueError("unexpected types")
        if not (0 < len(event["id"]) <= EVENT_ID_MAX and 0 < len(event["type"]) <= EVENT_TYPE_MAX):
            raise ValueError("id or type out of bounds")
        event["created"] = int(event["created"])
        if not 0 < event["created"] <= CREATED_MAX:
            raise ValueError("created out of bounds")
        if len(_object_id(event)) > OBJECT_ID_MAX:
            raise ValueError("object id out of bounds")
    except stripe.SignatureVerificationError:
        raise ApplicationError("The Stripe-Signature header does not match this payload.", {"code": "bad_signature"})
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        raise ApplicationError("The payload is not a Stripe event.", {"code": "bad_payload"})
    return event


def stripe_event_record(*, payload: bytes, signature: str) -> StripeEvent:
    """Verify a webhook delivery's signature and store its event once; processing is queued
    after the commit. A replay stores nothing new (and queues again only an event not yet
    applied, so a lost queue message heals on Stripe's next retry)."""
    from billing.tasks import stripe_event_process_task

    event = _parse(payload, signature)
    try:
        with rls.privileged(reason="billing: store a Stripe webhook event"):
            stored, _ = StripeEvent.objects.get_or_create(
                event_id=event["id"],
                defaults={
                    "type": event["type"],
                    "object_id": _object_id(event),
                    "object_version_at": _moment(event["created"]),
                    "payload": event,
                },
            )
            if stored.processed_at is None:
                transaction.on_commit(lambda: stripe_event_process_task.delay(event_id=stored.event_id), using=rls.PRIVILEGED_ALIAS)
    except QueueUnavailable as exc:  # stored but not queued: a non-2xx answer makes Stripe send it again
        logger.error("Stripe event %s stored but not queued: %s", event["id"], exc)
        raise ApplicationError("The event could not be queued; send it again.", {"code": "queue_unavailable"}, status_code=503)
    return stored


def stripe_event_process(*, event_id: str) -> str:
    """Apply a stored event exactly once. Returns the outcome: "applied", "stale" (a newer
    state is stored), "ignored" (nothing of ours to change), or "duplicate"."""
    event = StripeEvent.objects.using(rls.PRIVILEGED_ALIAS).get(event_id=event_id)
    if event.processed_at is not None:
        return "duplicate"
    obj = event.payload["data"]["object"]
    subscription, hint = None, {}
    if event.type == "checkout.session.completed" and obj.get("mode") == "subscription" and event.object_id:
        # The session names the subscription only; its state comes from Stripe, fetched before any lock.
        subscription = _stripe_call(stripe_client().v1.subscriptions.retrieve, event.object_id).to_dict()
        hint = {"organization_id": obj.get("client_reference_id") or "", "customer": _id(obj.get("customer"))}
    elif event.type.startswith("customer.subscription."):
        subscription = obj
    with rls.privileged(reason="billing: apply a Stripe webhook event"):
        event = StripeEvent.objects.select_for_update().get(pk=event.pk)
        if event.processed_at is not None:
            return "duplicate"
        outcome = _apply(event, obj, subscription, hint) if event.type in HANDLED_EVENTS and event.object_id else "ignored"
        event.processed_at = timezone.now()
        event.save(update_fields=["processed_at"])
    logger.info("Stripe event %s (%s): %s", event.event_id, event.type, outcome)
    return outcome


def _apply(event: StripeEvent, obj: dict, subscription: dict | None, hint: dict) -> str:
    with connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"stripe-subscription:{event.object_id}"])
    newer = StripeEvent.objects.filter(
        object_id=event.object_id, type__in=HANDLED_EVENTS, object_version_at__gt=event.object_version_at
    ).exclude(pk=event.pk)
    if event.type in INVOICE_EVENTS:
        return "stale" if newer.exists() else _payment_apply(event)
    if subscription is None:
        return "ignored"
    if newer.filter(type__in=STATE_EVENTS).exists():
        return "stale"
    ended = StripeEvent.objects.filter(object_id=event.object_id, type=DELETED).exclude(pk=event.pk)
    if event.type != DELETED and ended.exists():
        return "stale"  # a deleted Stripe subscription is final: an event from its last second does not revive it
    return _state_apply(event, subscription, hint, keep_status=_payments_applied(newer))


def _replaced(organization_id, stripe_subscription_id: str) -> bool:
    """Whether a row of this Stripe subscription was current here and has ended (replaced)."""
    return Subscription.objects.filter(
        organization_id=organization_id, stripe_subscription_id=stripe_subscription_id, ended_at__isnull=False
    ).exists()


def _payments_applied(events) -> bool:
    """Whether any of `events` is an invoice event that changed a row: one processed while a row
    naming its subscription was current. One processed before any did was ignored, and one not
    processed yet applies itself after this."""
    named_then = Subscription.objects.filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=OuterRef("processed_at")),
        stripe_subscription_id=OuterRef("object_id"),
        created_at__lte=OuterRef("processed_at"),
    )
    return events.filter(Exists(named_then), type__in=INVOICE_EVENTS, processed_at__isnull=False).exists()


def _organization_for(subscription: dict, hint: dict) -> Organization | None:
    """From the metadata Checkout set, the session's reference, or a subscription we already know."""
    organization_id = _object(subscription.get("metadata")).get("organization_id") or hint.get("organization_id")
    if not isinstance(organization_id, str):
        organization_id = ""
    if not organization_id:
        known = Q(stripe_subscription_id=subscription["id"])
        if customer := _id(subscription.get("customer")):
            known |= Q(stripe_customer_id=customer)
        organization_id = Subscription.objects.filter(known).values_list("organization_id", flat=True).first()
    try:
        return Organization.objects.filter(pk=organization_id).first() if organization_id else None
    except ValidationError:  # metadata that is not a UUID
        return None


def _price_of(subscription: dict) -> tuple[str, dict]:
    items = _object(subscription.get("items")).get("data")
    item = _object(items[0]) if isinstance(items, list) and items else {}
    return _id(_object(item.get("price")).get("id")), item


def _plan_for(price_id: str) -> tuple[Plan, str] | None:
    if not price_id:
        return None
    plan = Plan.objects.filter(Q(stripe_monthly_price_id=price_id) | Q(stripe_yearly_price_id=price_id)).first()
    if plan is None:
        return None
    return plan, Subscription.Interval.YEAR if plan.stripe_yearly_price_id == price_id else Subscription.Interval.MONTH


def _locked_current(organization_id) -> Subscription:
    """As a plan change locks it: a change that replaced the row while this waited for it is read
    again (the successor is committed by then), not lost."""
    return services.lock_current(organization_id)


STATE_FIELDS = (
    "status",
    "past_due_since",
    "current_period_start",
    "current_period_end",
    "trial_end",
    "cancel_at_period_end",
    "stripe_subscription_id",
    "stripe_customer_id",
    "requested_plan",
    "requested_at",
)


_STRIPE_ID_MAX = Subscription._meta.get_field("stripe_subscription_id").max_length  # the customer's column holds as many
_MOMENTS = ("current_period_start", "current_period_end", "trial_end")


def _state_unstorable(data: dict, item: dict, hint: dict) -> str | None:
    """What in a subscription Stripe sent no subscription row can hold (an id longer than its
    column, a time a datetime cannot be): applied, it raised on every retry of the task and the
    event stayed unprocessed for good. None when all of it fits."""
    customer = _id(data.get("customer")) or hint.get("customer") or ""
    if not isinstance(data.get("id"), str) or len(data["id"]) > _STRIPE_ID_MAX or len(customer) > _STRIPE_ID_MAX:
        return "an id longer than its column"
    for source, name in [(item, name) for name in _MOMENTS[:2]] + [(data, name) for name in _MOMENTS]:
        value = source.get(name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= CREATED_MAX):
            return f"a {name} that is not a time"
    return None


def _state_apply(event: StripeEvent, data: dict, hint: dict, *, keep_status: bool) -> str:
    """Make the organization's subscription what Stripe says it is."""
    price_id, item = _price_of(data)
    if problem := _state_unstorable(data, item, hint):
        logger.warning("Stripe event %s: %s; nothing changed", event.event_id, problem)
        return "ignored"
    status = STATUSES.get(data["status"]) if isinstance(data.get("status"), str) else None
    organization = _organization_for(data, hint)
    plan_interval = _plan_for(price_id)
    # An end needs no plan: a subscription on a price staff have since replaced (grandfathered) ends too.
    ended = event.type == DELETED or status not in CURRENT_STATUSES
    if status is None or organization is None or (plan_interval is None and not ended):
        logger.warning("Stripe event %s: no status, organization or plan for price %r; nothing changed", event.event_id, price_id)
        return "ignored"
    current = _locked_current(organization.pk)
    if ended:
        if current.stripe_subscription_id != data["id"]:
            return "ignored"  # an older Stripe subscription ended after a newer one replaced it
        services.subscription_plan_set(organization=organization, plan=selectors.plan_free())
        ended_as = status if status not in CURRENT_STATUSES else Subscription.Status.CANCELED  # unpaid -> expired
        Subscription.objects.filter(pk=current.pk).update(status=ended_as)
        return "applied"
    plan, interval = plan_interval
    # A status is kept only within one Stripe subscription: a new one starts from its own state.
    same_subscription = current.stripe_subscription_id == data["id"]
    if not same_subscription and current.stripe_subscription_id and _replaced(organization.pk, data["id"]):
        # A late event of a Stripe subscription another has replaced: it does not take the
        # organization back (its deletion, next, would then end the plan the newer one pays for).
        return "stale"
    if (current.stripe_subscription_id, current.plan_id, current.interval) != (data["id"], plan.pk, interval):
        kept = current.status, current.past_due_since
        current = services.subscription_plan_set(organization=organization, plan=plan, interval=interval)
        if same_subscription:
            current.status, current.past_due_since = kept  # a plan change at Stripe leaves what is owed as it was
    if not (keep_status and same_subscription):
        current.status = status
        if status != Subscription.Status.PAST_DUE:
            current.past_due_since = None
        elif current.past_due_since is None:
            current.past_due_since = event.object_version_at
    current.current_period_start = (
        _moment(item.get("current_period_start") or data.get("current_period_start")) or current.current_period_start
    )
    current.current_period_end = _moment(item.get("current_period_end") or data.get("current_period_end"))
    current.trial_end = _moment(data.get("trial_end"))
    current.cancel_at_period_end = bool(data.get("cancel_at_period_end"))
    current.stripe_subscription_id = data["id"]
    current.stripe_customer_id = _id(data.get("customer")) or hint.get("customer") or current.stripe_customer_id
    current.requested_plan, current.requested_at = None, None
    current.save(update_fields=[*STATE_FIELDS, "updated_at"])
    return "applied"


def _payment_apply(event: StripeEvent) -> str:
    """A paid invoice ends a past-due period; a failed one starts it (the grace period counts from it)."""
    for _ in range(services.LOCK_ATTEMPTS):  # a row replaced while this waited for it: its successor, read again
        current = (
            Subscription.objects.select_for_update(of=("self",))
            .filter(stripe_subscription_id=event.object_id, status__in=CURRENT_STATUSES)
            .first()
        )
        if current is not None:
            break
    else:
        return "ignored"  # not ours yet: the subscription's own event brings it
    if event.type == "invoice.paid" and current.status == Subscription.Status.PAST_DUE:
        current.status, current.past_due_since = Subscription.Status.ACTIVE, None
    elif event.type == "invoice.payment_failed":
        current.status = Subscription.Status.PAST_DUE
        current.past_due_since = current.past_due_since or event.object_version_at
    else:
        return "applied"
    current.save(update_fields=["status", "past_due_since", "updated_at"])
    return "applied"
