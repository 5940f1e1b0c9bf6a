"""Billing writes and the entitlement decision asked before every model call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone
from django_redis import get_redis_connection

from accounts.models import Organization, User
from analytics import counters
from billing import selectors
from billing.models import CURRENT_STATUSES, Plan, Subscription
from config.db import rls
from config.errors import ApplicationError, ForbiddenError, PlanRefused, QuotaExceeded, RateLimited

logger = selectors.logger
RATE_WINDOW_MS = 60_000
RATE_KEY_PREFIX = "billing:rate:v1"


class CheckoutRequired(ApplicationError):
    """A paid upgrade starts with a payment at Stripe Checkout (payment is configured)."""

    status_code = 402


# One round trip: read the organization's monthly counters, refuse on a monthly limit,
# else take a request from the per-minute sliding windows (organization, then API key)
# only if every window has room. Redis's clock, so every web process shares one window.
ENTITLEMENT_SCRIPT = """
local token_limit, message_limit, estimated = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, messages = 0, 0
if token_limit >= 0 or message_limit >= 0 then
    if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', 0, 0} end
    local row = redis.call('HMGET', KEYS[1], 'total_tokens', 'calls')
    tokens, messages = tonumber(row[1]) or 0, tonumber(row[2]) or 0
    if token_limit >= 0 and (tokens >= token_limit or tokens + estimated > token_limit) then return {'tokens', tokens, messages} end
    if message_limit >= 0 and messages >= message_limit then return {'messages', tokens, messages} end
end
local rpm, window = tonumber(ARGV[4]), tonumber(ARGV[5])
if rpm >= 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    for i = 2, #KEYS do
        redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
        if redis.call('ZCARD', KEYS[i]) >= rpm then
            local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
            local wait = window
            if oldest[2] then wait = tonumber(oldest[2]) + window - now end
            return {'rate', wait, i - 1}
        end
    end
    for i = 2, #KEYS do
        redis.call('ZADD', KEYS[i], now, ARGV[6])
        redis.call('PEXPIRE', KEYS[i], window)
    end
end
return {'ok', tokens, messages}
"""


@dataclass(frozen=True)
class Entitlement:
    """The answer: allowed, or refused with the error to raise (its message is the reason)."""

    allowed: bool
    plan: Plan
    refusal: ApplicationError | None = None
    degraded: bool = False  # decided from the database because Redis was unreachable
    usage: dict = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.refusal.message if self.refusal else ""

    def raise_if_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal


def _number(n: int) -> str:
    return f"{n:,}"


def _reset_words(moment: datetime) -> str:
    reset = selectors.month_reset(moment)
    return f"{reset.day} {reset:%B}" if reset.year == moment.year else f"{reset.day} {reset:%B %Y}"


def _plans_including(*, provider: str, model: str) -> list[str]:
    return [p.name for p in selectors.plan_list() if p.allows_provider(provider) and p.allows_model(model)]


def _plan_refusal(plan: Plan, provider: str, model: str) -> PlanRefused | None:
    if plan.allows_provider(provider) and plan.allows_model(model):
        return None
    others = _plans_including(provider=provider, model=model)
    what = f"the {provider} provider" if not plan.allows_provider(provider) else model
    where = f" It is included in {' and '.join(others)}." if others else " No plan includes it."
    extra = {"code": "model_not_in_plan", "plan": plan.slug, "provider": provider, "model": model, "plans": others}
    return PlanRefused(f"Your {plan.name} plan does not include {what}.{where}", extra)


def _monthly_refusal(plan: Plan, code: str, tokens: int, messages: int, estimated: int, now: datetime) -> QuotaExceeded:
    reset = selectors.month_reset(now)
    if code == "tokens":
        used = f"you have used {_number(tokens)}"
        if tokens < plan.monthly_tokens:
            used += f" and this message needs about {_number(estimated)} more"
        sentence = f"Your {plan.name} plan includes {_number(plan.monthly_tokens)} tokens a month; {used}."
        extra = {"code": "monthly_tokens", "limit": plan.monthly_tokens, "used": tokens, "estimated": estimated}
    else:
        sentence = f"Your {plan.name} plan includes {_number(plan.monthly_messages)} messages a month; you have sent {_number(messages)}."
        extra = {"code": "monthly_messages", "limit": plan.monthly_messages, "used": messages}
    extra.update(plan=plan.slug, resets_on=reset.isoformat())
    return QuotaExceeded(f"{sentence} Upgrade, or wait until {_reset_words(now)}.", extra)


def _monthly_code(plan: Plan, tokens: int, messages: int, estimated: int) -> str | None:
    """The database-side twin of the script's monthly checks (used when Redis is down)."""
    limit = plan.monthly_tokens
    if limit is not None and (tokens >= limit or tokens + estimated > limit):
        return "tokens"
    if plan.monthly_messages is not None and messages >= plan.monthly_messages:
        return "messages"
    return None


def _rate_refusal(plan: Plan, wait_ms: int, by_key: bool) -> RateLimited:
    seconds = max(1, -(-int(wait_ms) // 1000))
    who = "This API key is" if by_key else f"Your {plan.name} plan is"
    extra = {"code": "rate_limited", "limit": plan.requests_per_minute, "scope": "api_key" if by_key else "organization"}
    extra["retry_after"] = seconds
    return RateLimited(
        f"{who} limited to {_number(plan.requests_per_minute)} requests a minute; try again in {seconds} seconds.",
        extra,
        retry_after=seconds,
    )


_script_cache: dict[int, object] = {}


def _entitlement_script(client):
    script = _script_cache.get(id(client))
    if script is None:
        script = _script_cache[id(client)] = client.register_script(ENTITLEMENT_SCRIPT)
    return script


def rate_key(scope: str, owner_id) -> str:
    return f"{RATE_KEY_PREFIX}:{scope}:{owner_id}"


def _decide_in_redis(*, plan: Plan, organization_id, api_key_id, estimated: int, month) -> tuple[str, int, int]:
    client = get_redis_connection("default")
    keys = [counters.counter_key("org", organization_id, month), rate_key("org", organization_id)]
    if api_key_id:
        keys.append(rate_key("key", api_key_id))
    limits = [-1 if v is None else v for v in (plan.monthly_tokens, plan.monthly_messages)]
    rpm = -1 if plan.requests_per_minute is None else plan.requests_per_minute
    args = [*limits, estimated, rpm, RATE_WINDOW_MS, uuid.uuid4().hex]
    script = _entitlement_script(client)
    code, a, b = script(keys=keys, args=args)
    if code in (b"missing", "missing"):
        counters.counters_read(scope="org", owner_id=organization_id, month=month)  # rebuilt from the database
        code, a, b = script(keys=keys, args=args)
    return (code.decode() if isinstance(code, bytes) else code), int(a), int(b)


def entitlement_check(
    *,
    user: User,
    organization_id: uuid.UUID,
    provider: str,
    model: str,
    estimated_tokens: int = 0,
    api_key_id: uuid.UUID | str | None = None,
    conversations: int | None = None,
) -> Entitlement:
    """May `user` make this model call for `organization` now? Checks, in order: the plan
    includes the provider and model; a new conversation (pass how many the organization has)
    stays within the plan; this month's tokens and messages (UTC calendar month, live
    counters) leave room for `estimated_tokens`; the per-minute rate for the organization
    and the API key. One database read and, usually, one Redis script. When Redis is down
    the monthly limits are decided from the database and the rate limit is skipped (logged)."""
    if estimated_tokens < 0:
        raise ApplicationError("The estimated tokens must be zero or more.", {"code": "invalid", "field": "estimated_tokens"})
    subscription = selectors.subscription_current(organization_id=organization_id)
    if subscription is None:
        raise ForbiddenError("You are not a member of this organization.", {"code": "not_a_member"})
    now = timezone.now()
    plan = selectors.plan_in_force(subscription=subscription, now=now)
    refusal = _plan_refusal(plan, provider, model)
    if refusal is None and conversations is not None and plan.max_conversations is not None and conversations >= plan.max_conversations:
        refusal = QuotaExceeded(
            f"Your {plan.name} plan includes {_number(plan.max_conversations)} conversations; you have {_number(conversations)}. "
            "Delete one, or upgrade.",
            {"code": "max_conversations", "limit": plan.max_conversations, "used": conversations, "plan": plan.slug},
        )
    if refusal is not None:
        return Entitlement(False, plan, refusal)
    month = counters.month_of(now)
    try:
        code, a, b = _decide_in_redis(
            plan=plan, organization_id=organization_id, api_key_id=api_key_id, estimated=estimated_tokens, month=month
        )
        degraded = False
    except selectors.REDIS_ERRORS as exc:
        logger.warning("entitlement for %s decided from the database (Redis unreachable: %s); rate limit not applied", organization_id, exc)
        usage = counters.usage_from_database(scope="org", owner_id=organization_id, month=month)
        a, b, degraded = usage.total_tokens, usage.calls, True
        code = _monthly_code(plan, a, b, estimated_tokens) or "ok"
    if code == "rate":
        return Entitlement(False, plan, _rate_refusal(plan, a, by_key=b == 2))
    usage = {"tokens": a, "messages": b}
    if code in ("tokens", "messages"):
        return Entitlement(False, plan, _monthly_refusal(plan, code, a, b, estimated_tokens, now), degraded, usage)
    return Entitlement(True, plan, None, degraded, usage)


# --- Subscriptions -------------------------------------------------------------------

LOCK_ATTEMPTS = 3


def _lock_current(organization_id) -> Subscription:
    """The current subscription under a row lock; a concurrent change that replaced it
    makes the lock find nothing, so read again (the new row is committed by then)."""
    for _ in range(LOCK_ATTEMPTS):
        subscription = (
            Subscription.objects.select_for_update(of=("self",))
            .select_related("plan")
            .filter(organization_id=organization_id, status__in=CURRENT_STATUSES)
            .first()
        )
        if subscription is not None:
            return subscription
    raise ForbiddenError("Only the organization's owners and admins can change its billing.", {"code": "not_allowed"})


def _replace(current: Subscription, *, plan: Plan, interval: str, status: str, now: datetime) -> Subscription:
    """End `current` and start its successor in the same transaction (rows are history)."""
    current.status = Subscription.Status.CANCELED
    current.ended_at = now
    current.save(update_fields=["status", "ended_at", "updated_at"])
    return Subscription.objects.create(
        organization_id=current.organization_id,
        plan=plan,
        interval=interval,
        status=status,
        current_period_start=now,
        current_period_end=None if plan.is_free else selectors.period_end_for(start=now, interval=interval),
        stripe_customer_id=current.stripe_customer_id,
        stripe_subscription_id="" if plan.is_free else current.stripe_subscription_id,
    )


def _rank(plan: Plan) -> tuple:
    return (plan.monthly_price, plan.display_order)


def subscription_plan_set(*, organization: Organization, plan: Plan, interval: str = Subscription.Interval.MONTH) -> Subscription:
    """Put the organization on `plan` now (staff in admin, a paid checkout, an upgrade or an
    owner's immediate downgrade), active, with a new period."""
    if interval not in Subscription.Interval.values:
        raise ApplicationError("Choose a monthly or yearly interval.", {"code": "invalid", "field": "interval"})
    now = timezone.now()
    with rls.atomic():
        current = _lock_current(organization.pk)
        try:
            return _replace(current, plan=plan, interval=interval, status=Subscription.Status.ACTIVE, now=now)
        except IntegrityError as exc:  # the index held against a writer that skipped the lock
            raise ApplicationError("The subscription changed at the same time; try again.", {"code": "conflict"}) from exc


def _require_manager(actor: User, organization: Organization) -> None:
    if not selectors.caller_manages(user=actor, organization_id=organization.pk):
        raise ForbiddenError("Only the organization's owners and admins can change its billing.", {"code": "not_allowed"})


def subscription_change(
    *, actor: User, organization: Organization, plan: Plan, interval: str = Subscription.Interval.MONTH, immediately: bool = False
) -> Subscription:
    """An owner or admin changes plan. Downgrades apply at the period's end unless
    `immediately`. A paid upgrade is requested when payment is not configured (staff act
    on it in admin) and goes through checkout when it is; either way it applies at once
    when granted (`subscription_plan_set`)."""
    _require_manager(actor, organization)
    if not plan.is_active:
        raise ApplicationError("That plan is not offered any more.", {"code": "plan_inactive"})
    if interval not in Subscription.Interval.values:
        raise ApplicationError("Choose a monthly or yearly interval.", {"code": "invalid", "field": "interval"})
    current = selectors.subscription_current(organization_id=organization.pk)
    if current.plan_id == plan.pk and current.interval == interval:
        raise ApplicationError(f"You are already on the {plan.name} plan.", {"code": "same_plan"})
    if not plan.is_free and not selectors.payment_configured():
        return subscription_request(actor=actor, organization=organization, plan=plan)
    upgrade = _rank(plan) >= _rank(current.plan)
    if upgrade and not plan.is_free:
        # A paid upgrade starts with a payment: checkout puts the plan in place when it succeeds.
        raise CheckoutRequired(f"The {plan.name} plan is bought through checkout.")
    if upgrade or immediately or current.current_period_end is None:
        return subscription_plan_set(organization=organization, plan=plan, interval=interval)
    with rls.atomic():
        current = _lock_current(organization.pk)
        current.scheduled_plan, current.scheduled_interval = plan, interval
        current.save(update_fields=["scheduled_plan", "scheduled_interval", "updated_at"])
    return current


def subscription_request(*, actor: User, organization: Organization, plan: Plan) -> Subscription:
    """Record that an owner or admin asked for a paid plan while payment is not configured."""
    _require_manager(actor, organization)
    with rls.atomic():
        current = _lock_current(organization.pk)
        current.requested_plan, current.requested_at = plan, timezone.now()
        current.save(update_fields=["requested_plan", "requested_at", "updated_at"])
    logger.info("organization %s requested the %s plan", organization.pk, plan.slug)
    return current


def subscription_cancel(*, actor: User, organization: Organization) -> Subscription:
    """Cancel at the period's end: the plan stays until then, then the free plan applies."""
    _require_manager(actor, organization)
    with rls.atomic():
        current = _lock_current(organization.pk)
        if current.plan.is_free:
            raise ApplicationError("The free plan has nothing to cancel.", {"code": "nothing_to_cancel"})
        current.cancel_at_period_end = True
        current.save(update_fields=["cancel_at_period_end", "updated_at"])
    return current


def subscription_resume(*, actor: User, organization: Organization) -> Subscription:
    """Undo a cancellation or a scheduled downgrade before the period ends."""
    _require_manager(actor, organization)
    with rls.atomic():
        current = _lock_current(organization.pk)
        current.cancel_at_period_end, current.scheduled_plan, current.scheduled_interval = False, None, ""
        current.save(update_fields=["cancel_at_period_end", "scheduled_plan", "scheduled_interval", "updated_at"])
    return current


def subscription_trial_extend(*, subscription: Subscription, days: int) -> Subscription:
    """Staff: give a trial `days` more (from its end, or from now when it has ended)."""
    if days < 1:
        raise ApplicationError("Extend a trial by at least one day.", {"code": "invalid", "field": "days"})
    with rls.atomic():
        current = _lock_current(subscription.organization_id)
        start = max(current.trial_end or timezone.now(), timezone.now())
        current.status, current.trial_end = Subscription.Status.TRIALING, start + timedelta(days=days)
        current.save(update_fields=["status", "trial_end", "updated_at"])
    return current


def subscription_end_now(*, subscription: Subscription) -> Subscription:
    """Staff: cancel at once; the organization is on the free plan from now."""
    return subscription_plan_set(organization=subscription.organization, plan=selectors.plan_free())


def subscription_periods_advance(*, now: datetime | None = None) -> int:
    """Write down what `plan_in_force` already applies: ended periods take their scheduled
    plan (or free after a cancellation), ended trials and lapsed grace periods fall to free,
    and staff-granted paid periods without Stripe renew. Returns how many changed."""
    now = now or timezone.now()
    changed = 0
    with rls.privileged(reason="billing: advance ended subscription periods"):
        ended = Q(current_period_end__lte=now) | Q(status=Subscription.Status.TRIALING, trial_end__lte=now)
        lapsing = Q(status=Subscription.Status.PAST_DUE, past_due_since__isnull=False)
        due = Subscription.objects.select_related("plan", "scheduled_plan").filter(ended | lapsing, status__in=CURRENT_STATUSES)
        for subscription in due:
            changed += _advance(subscription, now)
    return changed


def _advance(subscription: Subscription, now: datetime) -> int:
    target = selectors.plan_in_force(subscription=subscription, now=now)
    if target.pk != subscription.plan_id:
        current = _lock_current(subscription.organization_id)
        _replace(current, plan=target, interval=subscription.scheduled_interval or current.interval, status="active", now=now)
        return 1
    ended = subscription.current_period_end is not None and subscription.current_period_end <= now
    if ended and not subscription.stripe_subscription_id:
        subscription.current_period_start = subscription.current_period_end
        subscription.current_period_end = selectors.period_end_for(start=subscription.current_period_end, interval=subscription.interval)
        subscription.save(update_fields=["current_period_start", "current_period_end", "updated_at"])
        return 1
    return 0
