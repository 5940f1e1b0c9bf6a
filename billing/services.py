"""Billing writes and the entitlement decision asked before every model call."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, connections
from django.db.models import Q
from django.utils import timezone

from accounts.models import Membership, Organization, User
from analytics import counters
from billing import selectors
from billing.models import CURRENT_STATUSES, Plan, Subscription
from config.cache import redis_client, redis_script
from config.db import rls
from config.db.partitions import month_add
from config.errors import ApplicationError, ForbiddenError, PlanRefused, QuotaExceeded, RateLimited

logger = selectors.logger
RATE_WINDOW_MS = 60_000
RATE_KEY_PREFIX = "billing:rate:v1"
RESERVATION_KEY_PREFIX = "billing:reservation:v1"
RESERVATIONS_DUE_KEY = f"{RESERVATION_KEY_PREFIX}:due"


class CheckoutRequired(ApplicationError):
    """A paid upgrade starts with a payment at Stripe Checkout (payment is configured)."""

    status_code = 402


# Shared by the scripts below. A reservation is two fields of the organization-month's hash
# (t:<id> tokens, c:<id> cost units) counted in its running sums (tokens, cost), its deadline in
# the organization-month's sorted set and in one global sorted set (for reservations_expire).
# Values stay strings: HINCRBY refuses "-0", so a zero is not subtracted.
_RESERVATION_LUA = """
local function release(held, due, every_due, prefix, id)
    local row = redis.call('HMGET', held, 't:' .. id, 'c:' .. id)
    redis.call('ZREM', due, id)
    redis.call('ZREM', every_due, prefix .. id)
    if not row[1] then return 0 end
    if row[1] ~= '0' then redis.call('HINCRBY', held, 'tokens', '-' .. row[1]) end
    if row[2] ~= '0' then redis.call('HINCRBY', held, 'cost', '-' .. row[2]) end
    redis.call('HDEL', held, 't:' .. id, 'c:' .. id)
    return 1
end
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# One round trip, on Redis's clock (every web process shares it): release the organization's
# expired reservations (their calls may or may not have been counted, so the counter is dropped
# and rebuilt from the ledger); refuse when settled usage + open reservations + this one exceed
# a monthly limit; else take a request from the per-minute windows (organization, then API key)
# only if every window has room, and reserve. The answer carries the state it decided on.
# Reservations still open from the month before count as held too: a call checked before
# midnight and metered after it lands in this month's ledger, so until it settles it holds here.
# KEYS: counter, held hash, due set, global due set, last month's held hash and due set, rate windows...
# ARGV: token, message, spend limits (-1: none), tokens and cost units to reserve, rpm, window ms,
#       reservation id (also the rate windows' entry), timeout ms, global member prefix, last
#       month's global member prefix
ENTITLEMENT_SCRIPT = (
    _RESERVATION_LUA
    + """
local token_limit, message_limit, spend_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want_tokens, want_cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local limited = token_limit >= 0 or message_limit >= 0 or spend_limit >= 0
local now = now_ms()
local state = {0, 0, 0, 0, 0, 0}
if limited then
    local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
    for _, id in ipairs(expired) do release(KEYS[2], KEYS[3], KEYS[4], ARGV[10], id) end
    local expired_before = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)
    for _, id in ipairs(expired_before) do release(KEYS[5], KEYS[6], KEYS[4], ARGV[11], id) end
    if #expired > 0 or #expired_before > 0 then redis.call('DEL', KEYS[1]) end
    if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
    local row = redis.call('HMGET', KEYS[1], 'total_tokens', 'calls', 'cost_units')
    local held = redis.call('HMGET', KEYS[2], 'tokens', 'cost')
    local held_before = redis.call('HMGET', KEYS[5], 'tokens', 'cost')
    state = {tonumber(row[1]) or 0, tonumber(row[2]) or 0, tonumber(row[3]) or 0,
             (tonumber(held[1]) or 0) + (tonumber(held_before[1]) or 0),
             (tonumber(held[2]) or 0) + (tonumber(held_before[2]) or 0),
             redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[6])}
    if token_limit >= 0 and state[1] + state[4] + want_tokens > token_limit then return {'tokens', unpack(state)} end
    if message_limit >= 0 and state[2] + state[6] >= message_limit then return {'messages', unpack(state)} end
    if spend_limit >= 0 and state[3] + state[5] + want_cost > spend_limit then return {'spend', unpack(state)} end
end
local rpm, window = tonumber(ARGV[6]), tonumber(ARGV[7])
if rpm >= 0 then
    for i = 7, #KEYS do
        redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
        if redis.call('ZCARD', KEYS[i]) >= rpm then
            local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
            local wait = window
            if oldest[2] then wait = tonumber(oldest[2]) + window - now end
            return {'rate', wait, i - 6}
        end
    end
    for i = 7, #KEYS do
        redis.call('ZADD', KEYS[i], now, ARGV[8])
        redis.call('PEXPIRE', KEYS[i], window)
    end
end
-- Reserved on every plan, limited or not: a plan with limits put in force while the call runs
-- (staff, or a downgrade at the period's end) counts it with the others in progress.
local id, deadline, keep = ARGV[8], now + tonumber(ARGV[9]), tonumber(ARGV[9]) + 3600000
redis.call('HSET', KEYS[2], 't:' .. id, ARGV[4], 'c:' .. id, ARGV[5])
redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'cost', ARGV[5])
redis.call('ZADD', KEYS[3], deadline, id)
redis.call('ZADD', KEYS[4], deadline, ARGV[10] .. id)
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
return {'reserved', unpack(state)}
"""
)
# KEYS: held hash, due set, global due set. ARGV: global member prefix, reservation id.
SETTLE_SCRIPT = _RESERVATION_LUA + "return release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])"
# A call still running pushes its reservation's deadline on (a reservation already released stays so).
# KEYS: held hash, due set, global due set. ARGV: global member prefix, reservation id, timeout ms.
EXTEND_SCRIPT = (
    _RESERVATION_LUA
    + """
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
local deadline, keep = now_ms() + tonumber(ARGV[3]), tonumber(ARGV[3]) + 3600000
redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[2])
redis.call('ZADD', KEYS[3], 'XX', deadline, ARGV[1] .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return 1
"""
)
# KEYS: held hash, due set, global due set, then the counters to drop (the reservation's month's
# and the current month's). ARGV: global member prefix, expired ids...
EXPIRE_SCRIPT = (
    _RESERVATION_LUA
    + """
local released = 0
for i = 2, #ARGV do released = released + release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[i]) end
if released > 0 then for k = 4, #KEYS do redis.call('DEL', KEYS[k]) end end
return released
"""
)
# A rebuilt counter's calls in progress, held again: those whose reservation Redis lost (a
# restart, a flush) or never had (decided while it was down). Held until the usual timeout, as
# a reservation: one that finishes before is counted twice until then, never zero times.
# KEYS: held hash, due set, global due set, last month's held hash. ARGV: global member prefix,
# timeout ms, then (id, tokens, cost units) of each call.
RESTORE_SCRIPT = (
    _RESERVATION_LUA
    + """
local deadline, keep = now_ms() + tonumber(ARGV[2]), tonumber(ARGV[2]) + 3600000
local restored = 0
for i = 3, #ARGV, 3 do
    local id = ARGV[i]
    if redis.call('HEXISTS', KEYS[1], 't:' .. id) == 0 and redis.call('HEXISTS', KEYS[4], 't:' .. id) == 0 then
        redis.call('HSET', KEYS[1], 't:' .. id, ARGV[i + 1], 'c:' .. id, ARGV[i + 2])
        redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[i + 1])
        redis.call('HINCRBY', KEYS[1], 'cost', ARGV[i + 2])
        redis.call('ZADD', KEYS[2], deadline, id)
        redis.call('ZADD', KEYS[3], deadline, ARGV[1] .. id)
        restored = restored + 1
    end
end
if restored > 0 then
    redis.call('PEXPIRE', KEYS[1], keep)
    redis.call('PEXPIRE', KEYS[2], keep)
end
return restored
"""
)


class CallHeld(NamedTuple):
    """A call in progress as the database keeps it: its reservation's id (or one made of its
    request's id, when it was decided without Redis) and the most it may still use."""

    reservation: str
    tokens: int
    cost_units: int


@dataclass(frozen=True)
class Entitlement:
    """The answer: allowed, or refused with the error to raise (its message is the reason).

    An allowed call may hold a `reservation` (settle it with `reservation_settle` once its
    ledger row has committed) and must ask the provider for at most `max_output_tokens`."""

    allowed: bool
    plan: Plan
    refusal: ApplicationError | None = None
    degraded: bool = False  # decided from the database because Redis was unreachable
    usage: dict = field(default_factory=dict)
    reservation: str | None = None
    max_output_tokens: int = 0
    month: date | None = None

    @property
    def reason(self) -> str:
        return self.refusal.message if self.refusal else ""

    def raise_if_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal


def _number(n: int) -> str:
    return f"{n:,}"


def _dollars(units: int) -> str:
    return f"${Decimal(units) / counters.UNITS:,.2f}"


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


def _monthly_refusal(plan: Plan, code: str, usage: dict, now: datetime) -> QuotaExceeded:
    reset = selectors.month_reset(now)
    if code == "tokens":
        tokens, held = usage["tokens"], usage["held_tokens"]
        used = f"you have used {_number(tokens)}"
        if held:
            used += f", replies in progress hold {_number(held)}"
        if tokens + held < plan.monthly_tokens:
            used += f" and this message may need up to {_number(usage['reserved_tokens'])} more"
        sentence = f"Your {plan.name} plan includes {_number(plan.monthly_tokens)} tokens a month; {used}."
        extra = {"code": "monthly_tokens", "limit": plan.monthly_tokens, "used": tokens, "held": held, "needs": usage["reserved_tokens"]}
    elif code == "spend":
        cost, held, limit = usage["cost_units"], usage["held_cost_units"], counters.cost_units(plan.monthly_spend)
        used = f"you have used {_dollars(cost)}"
        if held:
            used += f", replies in progress hold {_dollars(held)}"
        if cost + held < limit:
            used += f" and this message may cost up to {_dollars(usage['reserved_cost_units'])}"
        sentence = f"Your {plan.name} plan includes {_dollars(limit)} of model usage a month; {used}."
        extra = {"code": "monthly_spend", "limit": str(plan.monthly_spend), "used": str(Decimal(cost) / counters.UNITS)}
    else:
        messages, held = usage["messages"], usage["held_calls"]
        sent = f"you have sent {_number(messages)}" + (f" and {_number(held)} more are in progress" if held else "")
        sentence = f"Your {plan.name} plan includes {_number(plan.monthly_messages)} messages a month; {sent}."
        extra = {"code": "monthly_messages", "limit": plan.monthly_messages, "used": messages, "held": held}
    extra.update(plan=plan.slug, resets_on=reset.isoformat())
    return QuotaExceeded(f"{sentence} Upgrade, or wait until {_reset_words(now)}.", extra)


def _spend_limit(plan: Plan) -> int:
    return -1 if plan.monthly_spend is None else counters.cost_units(plan.monthly_spend)


def _monthly_code(plan: Plan, usage: dict) -> str | None:
    """The database-side twin of the script's monthly checks (used when Redis is down)."""
    if plan.monthly_tokens is not None and usage["tokens"] + usage["held_tokens"] + usage["reserved_tokens"] > plan.monthly_tokens:
        return "tokens"
    if plan.monthly_messages is not None and usage["messages"] + usage["held_calls"] >= plan.monthly_messages:
        return "messages"
    spend = _spend_limit(plan)
    if spend >= 0 and usage["cost_units"] + usage["held_cost_units"] + usage["reserved_cost_units"] > spend:
        return "spend"
    return None


def _limits_monthly(plan: Plan) -> bool:
    return plan.monthly_tokens is not None or plan.monthly_messages is not None or plan.monthly_spend is not None


def _decide_in_database(plan: Plan, organization_id, month: date, want: dict, in_progress) -> tuple[str, list]:
    """The script's monthly checks with Redis down: settled usage from the ledger, and what the
    calls in progress may still use (`in_progress`), which nothing in Redis holds now. Decisions
    for one organization and month queue on a lock held to the end of the caller's transaction,
    the one that stores the call: each then reads the calls in progress the ones before it stored,
    so concurrent senders cannot all pass on the same settled count."""
    if not _limits_monthly(plan):
        return "ok", [0, 0, 0, 0, 0, 0]
    with connections[rls.current_alias()].cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"entitlement-without-redis:{organization_id}:{month}"])
    # In progress first, then settled: a call finishing in between is counted twice (conservative), never not at all.
    calls = in_progress(month) if in_progress is not None else []
    held_calls, held_tokens, held_cost = len(calls), sum(c.tokens for c in calls), sum(c.cost_units for c in calls)
    settled = counters.usage_from_database(scope="org", owner_id=organization_id, month=month)
    state = [settled.total_tokens, settled.calls, settled.cost_units, held_tokens, held_cost, held_calls]
    return _monthly_code(plan, {**dict(zip(_STATE, state)), **want}) or "ok", state


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


def rate_key(scope: str, owner_id) -> str:
    return f"{RATE_KEY_PREFIX}:{scope}:{owner_id}"


def _reservation_keys(organization_id, month: date) -> tuple[str, str, str, str]:
    """(held hash, due set, global due set, global member prefix) of an organization-month."""
    base = f"{RESERVATION_KEY_PREFIX}:{month:%Y%m}:{organization_id}"
    return base, f"{base}:due", RESERVATIONS_DUE_KEY, f"{month:%Y%m}:{organization_id}:"


_STATE = ("tokens", "messages", "cost_units", "held_tokens", "held_cost_units", "held_calls")


class CounterNotStored(Exception):
    """Redis answers but did not keep the rebuilt counter: the check is decided from the database,
    never waved through for want of a counter."""


def _decide_in_redis(
    *, plan: Plan, organization_id, api_key_id, tokens: int, cost: int, month: date, reservation: str, in_progress
) -> tuple[str, list]:
    client = redis_client()
    counters.counters_drop_unsure(client)
    held, due, every_due, prefix = _reservation_keys(organization_id, month)
    held_before, due_before, _, prefix_before = _reservation_keys(organization_id, month_add(month, -1))
    keys = [counters.counter_key("org", organization_id, month), held, due, every_due, held_before, due_before]
    keys.append(rate_key("org", organization_id))
    if api_key_id:
        keys.append(rate_key("key", api_key_id))
    limits = [-1 if v is None else v for v in (plan.monthly_tokens, plan.monthly_messages)]
    rpm = -1 if plan.requests_per_minute is None else plan.requests_per_minute
    timeout_ms = settings.ENTITLEMENT_RESERVATION_TIMEOUT * 1000
    args = [*limits, _spend_limit(plan), tokens, cost, rpm, RATE_WINDOW_MS, reservation, timeout_ms, prefix, prefix_before]
    script = redis_script(ENTITLEMENT_SCRIPT)
    answer = script(keys=keys, args=args)
    if answer[0] in (b"missing", "missing"):
        # In progress first, then settled (as without Redis): a call finishing in between is
        # counted twice, never not at all.
        calls = in_progress(month) if in_progress is not None else []
        counters.counters_read(scope="org", owner_id=organization_id, month=month)  # rebuilt from the database
        if calls:
            restore = redis_script(RESTORE_SCRIPT)
            restore(keys=[held, due, every_due, held_before], args=[prefix, timeout_ms, *(v for c in calls for v in c)])
        answer = script(keys=keys, args=args)
        if answer[0] in (b"missing", "missing"):  # Redis would not store it (full, or a replica)
            raise CounterNotStored(counters.counter_key("org", organization_id, month))
    code = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
    return code, [int(x) for x in answer[1:]]


def _validated(estimated_tokens: int, max_output_tokens: int | None, max_cost: Decimal) -> None:
    if type(estimated_tokens) is not int or estimated_tokens < 0:
        raise ApplicationError("The estimated tokens must be zero or more.", {"code": "invalid", "field": "estimated_tokens"})
    if max_output_tokens is not None and (type(max_output_tokens) is not int or max_output_tokens < 1):
        raise ApplicationError(
            "The maximum output tokens must be a whole number of at least 1.", {"code": "invalid", "field": "max_output_tokens"}
        )
    if not isinstance(max_cost, Decimal) or not max_cost.is_finite() or max_cost < 0:
        raise ApplicationError("The maximum cost must be an amount of zero or more.", {"code": "invalid", "field": "max_cost"})


def entitlement_check(
    *,
    user: User,
    organization_id: uuid.UUID,
    provider: str,
    model: str,
    estimated_tokens: int = 0,
    max_output_tokens: int | None = None,
    max_cost: Decimal | Callable[[int], Decimal] = Decimal(0),
    api_key_id: uuid.UUID | str | None = None,
    conversations: Callable[[], int] | None = None,
    subscription: Subscription | None | object = selectors.SUBSCRIPTION_UNREAD,
    in_progress: Callable[[date], list[CallHeld]] | None = None,
) -> Entitlement:
    """May `user` make this model call for `organization` now? Checks, in order: the plan
    includes the provider and model; a new conversation stays within the plan (`conversations`
    counts the ones it would join, and is called only when the plan limits them: a count is a
    query); this month's tokens, messages and spend (UTC calendar month, live
    counters plus the calls in progress) leave room for this call's most: `estimated_tokens`
    of input plus its output cap (`max_output_tokens`, at most the plan's), and `max_cost`
    (USD, the caller prices that from the catalog: an amount, or a function of the output cap
    this check settles on, as the plan's may be lower than the caller's); the per-minute rate
    for the organization and the API key.

    Allowed, the call's most is reserved in the same Redis script (one database read, one
    script), on every plan: one with limits put in force while the call runs counts it: pass `max_output_tokens` of the answer to the
    provider and call `reservation_settle` once the ledger row has committed; an unsettled
    reservation expires after ENTITLEMENT_RESERVATION_TIMEOUT seconds. When Redis is down
    the monthly limits are decided from the database totals, nothing can be reserved
    (`reservation` is None) and the rate limit is skipped (logged); `in_progress` then gives the
    organization's calls in progress that month (CallHeld: the most each may still use), which
    count as held, as their reservations would. When Redis has lost the organization's counter
    (a restart, a flush, an expiry), it is rebuilt from the ledger and those calls whose
    reservation Redis does not hold are held again, so a call decided during an outage, or
    reserved before a restart, still counts once Redis answers.

    `subscription`: the organization's current one (or None), when the caller read it already
    in the same transaction (selectors.subscription_current_joined)."""
    _validated(estimated_tokens, max_output_tokens, Decimal(0) if callable(max_cost) else max_cost)
    if subscription is selectors.SUBSCRIPTION_UNREAD:
        subscription = selectors.subscription_current(organization_id=organization_id)
    if subscription is None:
        raise ForbiddenError("You are not a member of this organization.", {"code": "not_a_member"})
    now = timezone.now()
    plan = selectors.plan_in_force(subscription=subscription, now=now)
    cap = plan.max_output_tokens or settings.CHAT_MAX_OUTPUT_TOKENS
    output_cap = min(max_output_tokens or cap, cap)
    refusal = _plan_refusal(plan, provider, model)
    if refusal is None and conversations is not None and plan.max_conversations is not None:
        if (used := conversations()) >= plan.max_conversations:
            refusal = QuotaExceeded(
                f"Your {plan.name} plan includes {_number(plan.max_conversations)} conversations; you have {_number(used)}. "
                "Delete one, or upgrade.",
                {"code": "max_conversations", "limit": plan.max_conversations, "used": used, "plan": plan.slug},
            )
    if refusal is not None:
        return Entitlement(False, plan, refusal, max_output_tokens=output_cap)
    if callable(max_cost):
        max_cost = max_cost(output_cap)
        _validated(estimated_tokens, max_output_tokens, max_cost)
    month = counters.month_of(now)
    want = {"reserved_tokens": estimated_tokens + output_cap, "reserved_cost_units": counters.cost_units(max_cost)}
    reservation = uuid.uuid4().hex
    try:
        code, state = _decide_in_redis(
            plan=plan,
            organization_id=organization_id,
            api_key_id=api_key_id,
            tokens=want["reserved_tokens"],
            cost=want["reserved_cost_units"],
            month=month,
            reservation=reservation,
            in_progress=in_progress,
        )
        degraded = False
    except (*selectors.REDIS_ERRORS, CounterNotStored) as exc:
        logger.warning("entitlement for %s decided from the database (Redis: %r); rate limit not applied", organization_id, exc)
        (code, state), degraded = _decide_in_database(plan, organization_id, month, want, in_progress), True
    if code == "rate":
        return Entitlement(False, plan, _rate_refusal(plan, state[0], by_key=state[1] == 2), max_output_tokens=output_cap)
    usage = {**dict(zip(_STATE, state)), **want}
    if code in ("tokens", "messages", "spend"):
        return Entitlement(False, plan, _monthly_refusal(plan, code, usage, now), degraded, usage, max_output_tokens=output_cap)
    held = reservation if code == "reserved" else None
    return Entitlement(True, plan, None, degraded, usage, held, output_cap, month)


def reservation_settle(*, organization_id, reservation: str | None, month: date, counted: counters.HeldIncrements | None = None) -> bool:
    """Release a call's reservation (`Entitlement.reservation` and `.month`). Call it after the
    call's ledger row has committed: its counter increment runs on that commit first, so the
    usage is briefly counted twice (conservative), never zero times. `counted`, the increments
    held back from that commit (counters.increments_held), go first in the same round trip.
    Idempotent: True only for the call that released it. With Redis unreachable, or refusing
    writes, it is left to expire (logged): the call has been metered, so it must not fail now."""
    if not reservation:
        return False  # anything `counted` goes as increments_held ends
    held, due, every_due, prefix = _reservation_keys(organization_id, month)
    try:
        settled = counters.increments_send(
            counted.take() if counted is not None else [], then=(SETTLE_SCRIPT, [held, due, every_due], [prefix, reservation])
        )
        if isinstance(settled, Exception):  # Redis answered with an error
            raise settled
        return bool(settled)
    except selectors.REDIS_ERRORS as exc:
        logger.warning("reservation %s of %s not settled (Redis: %s); it expires instead", reservation, organization_id, exc)
        return False


def reservation_extend(*, organization_id, reservation: str | None, month: date) -> bool:
    """Keep a call's reservation from expiring while the call still runs (a stream its reader takes
    longer than ENTITLEMENT_RESERVATION_TIMEOUT over): its deadline moves to a timeout from now.
    False when there is none to extend, or Redis is unreachable (it then expires as it would)."""
    if not reservation:
        return False
    held, due, every_due, prefix = _reservation_keys(organization_id, month)
    timeout_ms = settings.ENTITLEMENT_RESERVATION_TIMEOUT * 1000
    try:
        return bool(redis_script(EXTEND_SCRIPT)(keys=[held, due, every_due], args=[prefix, reservation, timeout_ms]))
    except selectors.REDIS_ERRORS as exc:
        logger.warning("reservation %s of %s not extended (Redis: %s)", reservation, organization_id, exc)
        return False


def reservations_expire() -> int:
    """Release every organization's reservations past their deadline (a killed worker, a lost
    connection): their calls may or may not have been counted, so each organization-month's
    counter is dropped and rebuilt from the ledger at its next check. Returns how many."""
    try:
        client = redis_client()
        seconds, micros = client.time()
        due = client.zrangebyscore(RESERVATIONS_DUE_KEY, "-inf", seconds * 1000 + micros // 1000)
    except selectors.REDIS_ERRORS as exc:
        logger.warning("reservations not expired (Redis unreachable: %s)", exc)
        return 0
    by_owner: dict[str, list[str]] = {}
    for member in due:
        # <month>:<organization>:<reservation>; a restored hold's id has colons of its own (call:<request id>).
        month_text, organization_id, reservation = (member.decode() if isinstance(member, bytes) else member).split(":", 2)
        by_owner.setdefault((month_text, organization_id), []).append(reservation)
    released = 0
    for (month_text, organization_id), reservations in by_owner.items():
        month = date(int(month_text[:4]), int(month_text[4:]), 1)
        held, due_key, every_due, prefix = _reservation_keys(organization_id, month)
        # A call checked late in one month may be metered early in the next: both months' counters
        # are rebuilt from the ledger, or the new month's would miss it (as the entitlement's own release does).
        months = {month, counters.month_of()}
        dropped = [counters.counter_key("org", organization_id, each) for each in sorted(months)]
        released += redis_script(EXPIRE_SCRIPT)(keys=[held, due_key, every_due, *dropped], args=[prefix, *reservations])
    if released:
        logger.warning("%d reservation(s) expired unsettled and released", released)
    return released


# --- Subscriptions -------------------------------------------------------------------

LOCK_ATTEMPTS = 3


def lock_current(organization_id) -> Subscription:
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
    current.ended_from, current.status = current.status, Subscription.Status.CANCELED  # was it a trial, or paying?
    current.ended_at = now
    current.save(update_fields=["status", "ended_from", "ended_at", "updated_at"])
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
    """Upgrade or downgrade: by what the plan costs a month (a plan sold only yearly, a twelfth)."""
    return (plan.monthly_price or plan.yearly_price / 12, plan.display_order)


def subscription_plan_set(*, organization: Organization, plan: Plan, interval: str = Subscription.Interval.MONTH) -> Subscription:
    """Put the organization on `plan` now (staff in admin, a paid checkout, an upgrade or an
    owner's immediate downgrade), active, with a new period."""
    if interval not in Subscription.Interval.values:
        raise ApplicationError("Choose a monthly or yearly interval.", {"code": "invalid", "field": "interval"})
    now = timezone.now()
    with rls.atomic():
        current = lock_current(organization.pk)
        try:
            return _replace(current, plan=plan, interval=interval, status=Subscription.Status.ACTIVE, now=now)
        except IntegrityError as exc:  # the index held against a writer that skipped the lock
            raise ApplicationError("The subscription changed at the same time; try again.", {"code": "conflict"}) from exc


def _lock_as_manager(actor: User, organization: Organization) -> Subscription:
    """The current subscription, locked for a change `actor` makes, with the actor's membership
    held first (as accounts' _require_admin(lock=True)) and their role read again under it: a
    demotion waits for the change, or comes first and the change is refused. Checked only before,
    a role taken away meanwhile made the save match no row under its policy: a 500."""
    list(Membership.objects.select_for_update().filter(organization_id=organization.pk, user_id=actor.pk).values_list("pk"))
    _require_manager(actor, organization)
    return lock_current(organization.pk)


def _require_manager(actor: User, organization: Organization) -> None:
    if not selectors.caller_manages(user=actor, organization_id=organization.pk):
        raise ForbiddenError("Only the organization's owners and admins can change its billing.", {"code": "not_allowed"})


def refuse_if_billed_by_stripe(current: Subscription) -> None:
    if current.billed_by_stripe:
        raise ApplicationError("Your paid plan is managed in the billing portal: change or cancel it there.", {"code": "use_portal"})


def subscription_change(
    *, actor: User, organization: Organization, plan: Plan, interval: str = Subscription.Interval.MONTH, immediately: bool = False
) -> Subscription:
    """An owner or admin changes plan. Downgrades apply at the period's end unless
    `immediately`. A paid upgrade, or any paid plan during a trial, is requested when payment
    is not configured (staff act on it in admin) and goes through checkout when it is; either
    way it applies at once when granted (`subscription_plan_set`)."""
    _require_manager(actor, organization)
    if not plan.is_active:
        raise ApplicationError("That plan is not offered any more.", {"code": "plan_inactive"})
    if interval not in Subscription.Interval.values:
        raise ApplicationError("Choose a monthly or yearly interval.", {"code": "invalid", "field": "interval"})
    with rls.atomic():
        # Decided on the row as it is under its lock: a checkout's webhook that put a plan billed
        # by Stripe in place meanwhile is seen here, not replaced behind Stripe's back.
        current = _lock_as_manager(actor, organization)
        # Ranked against the plan in force, not the row's: once a period ends, its cancellation or
        # scheduled downgrade applies before the periods task writes it down, and Pro chosen after
        # a cancelled Enterprise is an upgrade from Free, bought through checkout.
        now = timezone.now()
        in_force = selectors.plan_in_force(subscription=current, now=now)
        period_over = current.current_period_end is not None and current.current_period_end <= now
        if in_force.pk == plan.pk and current.plan_id == plan.pk and current.interval == interval:
            raise ApplicationError(f"You are already on the {plan.name} plan.", {"code": "same_plan"})
        refuse_if_billed_by_stripe(current)
        if current.status == Subscription.Status.PAST_DUE and not plan.is_free:
            # Ranked by the plan unpaid, a cheaper paid plan was a "downgrade" that started active.
            raise ApplicationError(
                "A payment is overdue: pay it, or move to the Free plan, before choosing another paid plan.", {"code": "past_due"}
            )
        if in_force.pk == plan.pk != current.plan_id:
            # The plan chosen is already in force, by a change the periods task has not written down
            # yet (a cancellation, a scheduled plan, a lapsed grace): written down now.
            return subscription_plan_set(organization=organization, plan=plan, interval=interval)
        if not plan.is_free and not selectors.payment_configured():
            return subscription_request(actor=actor, organization=organization, plan=plan)
        upgrade = _rank(plan) >= _rank(in_force)
        if not plan.is_free and (upgrade or current.status == Subscription.Status.TRIALING):
            # A paid upgrade starts with a payment: checkout puts the plan in place when it succeeds.
            # So does any paid plan after a trial: a cheaper one would start paid, and unpaid, for good.
            raise CheckoutRequired(f"The {plan.name} plan is bought through checkout.")
        # A period already over has no end left to wait for: a change scheduled for it applies now.
        if upgrade or immediately or current.current_period_end is None or period_over:
            return subscription_plan_set(organization=organization, plan=plan, interval=interval)
        current.scheduled_plan, current.scheduled_interval = plan, interval
        current.save(update_fields=["scheduled_plan", "scheduled_interval", "updated_at"])
    return current


def subscription_request(*, actor: User, organization: Organization, plan: Plan) -> Subscription:
    """Record that an owner or admin asked for a paid plan while payment is not configured."""
    _require_manager(actor, organization)
    with rls.atomic():
        current = _lock_as_manager(actor, organization)
        current.requested_plan, current.requested_at = plan, timezone.now()
        current.save(update_fields=["requested_plan", "requested_at", "updated_at"])
    logger.info("organization %s requested the %s plan", organization.pk, plan.slug)
    return current


def subscription_cancel(*, actor: User, organization: Organization) -> Subscription:
    """Cancel at the period's end: the plan stays until then, then the free plan applies."""
    _require_manager(actor, organization)
    with rls.atomic():
        current = _lock_as_manager(actor, organization)
        if current.plan.is_free:
            raise ApplicationError("The free plan has nothing to cancel.", {"code": "nothing_to_cancel"})
        refuse_if_billed_by_stripe(current)
        current.cancel_at_period_end = True
        current.save(update_fields=["cancel_at_period_end", "updated_at"])
    return current


def subscription_resume(*, actor: User, organization: Organization) -> Subscription:
    """Undo a cancellation or a scheduled downgrade before the period ends."""
    _require_manager(actor, organization)
    with rls.atomic():
        current = _lock_as_manager(actor, organization)
        refuse_if_billed_by_stripe(current)
        if current.current_period_end is not None and current.current_period_end <= timezone.now():
            # The change applied at the period's end (the limits follow it at once; the periods task
            # writes it down within minutes): undone now, a plan that ended would come back.
            raise ApplicationError("The period has ended, and the change with it: choose a plan instead.", {"code": "period_ended"})
        current.cancel_at_period_end, current.scheduled_plan, current.scheduled_interval = False, None, ""
        current.save(update_fields=["cancel_at_period_end", "scheduled_plan", "scheduled_interval", "updated_at"])
    return current


def subscription_trial_extend(*, subscription: Subscription, days: int) -> Subscription:
    """Staff: give a trial `days` more (from its end, or from now when it has ended)."""
    if days < 1:
        raise ApplicationError("Extend a trial by at least one day.", {"code": "invalid", "field": "days"})
    with rls.atomic():
        current = lock_current(subscription.organization_id)
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
    """Decided on the organization's current row as it is once locked: the row read before may
    have changed, or been replaced, while the lock was waited for (a plan bought at checkout,
    a period staff extended)."""
    current = lock_current(subscription.organization_id)
    target = selectors.plan_in_force(subscription=current, now=now)
    if target.pk != current.plan_id:
        _replace(current, plan=target, interval=current.scheduled_interval or current.interval, status="active", now=now)
        return 1
    ended = current.current_period_end is not None and current.current_period_end <= now
    if ended and not current.stripe_subscription_id:
        current.current_period_start, current.current_period_end = selectors.period_next(current)
        current.save(update_fields=["current_period_start", "current_period_end", "updated_at"])
        return 1
    return 0
