"""Billing reads: plans, an organization's current subscription, the plan in force now,
and usage against each limit. Reads run under the caller's row-level security context."""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from accounts import selectors as accounts_selectors
from accounts.models import Membership, Organization, User
from analytics import counters
from billing.models import CURRENT_STATUSES, Plan, Subscription
from config.cache import REDIS_ERRORS as CACHE_REDIS_ERRORS
from config.db import rls
from config.db.partitions import month_add
from config.db.rows import columns_of, fetch_one_prepared, model_from_row

MANAGER_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)
# Unreachable, timed out, or answering with an error (a replica's READONLY, OOM when full): each
# makes billing decide from the database or leave a reservation to expire, never fail a call.
REDIS_ERRORS = (*CACHE_REDIS_ERRORS, OSError)
logger = logging.getLogger("confab.billing")


def plan_list() -> QuerySet[Plan]:
    """The active plans in display order."""
    return Plan.objects.filter(is_active=True).order_by("display_order", "monthly_price", "name")


def plan_get(*, slug: str) -> Plan | None:
    return Plan.objects.filter(slug=slug, is_active=True).first()


def plan_free() -> Plan:
    return Plan.objects.get(slug="free")


# Asked before every model call: one statement, no ORM compilation (the plan comes joined).
_CURRENT_STATUSES_SQL = ", ".join(repr(s) for s in CURRENT_STATUSES)
_CURRENT_SQL = (
    f"SELECT {columns_of(Subscription, 's')}, {columns_of(Plan, 'p')} "
    "FROM billing_subscription s JOIN billing_plan p ON p.id = s.plan_id "
    f"WHERE s.organization_id = %s AND s.status IN ({_CURRENT_STATUSES_SQL})"
)
# Not read yet: entitlement_check reads it (None means the caller cannot see one).
SUBSCRIPTION_UNREAD = object()


def subscription_current_joined(organization_column: str) -> tuple[str, str]:
    """(columns, joins) that add the current subscription of `organization_column`'s
    organization, with its plan, to another statement's row: the send reads it with the
    conversation it locks, one round trip fewer per message. `subscription_from_row` reads
    the columns back, in the order given."""
    columns = f"{columns_of(Subscription, 'cur_s')}, {columns_of(Plan, 'cur_p')}"
    joins = (
        f"LEFT JOIN billing_subscription cur_s ON cur_s.organization_id = {organization_column} "
        f"AND cur_s.status IN ({_CURRENT_STATUSES_SQL}) LEFT JOIN billing_plan cur_p ON cur_p.id = cur_s.plan_id"
    )
    return columns, joins


def subscription_from_row(alias: str, row) -> Subscription | None:
    """The subscription with its plan from the columns of _CURRENT_SQL or subscription_current_joined."""
    if row is None or row[0] is None:
        return None
    split = len(Subscription._meta.concrete_fields)
    subscription = model_from_row(Subscription, alias, row[:split])
    subscription.plan = model_from_row(Plan, alias, row[split:])
    return subscription


def organization_has_trialed(*, organization_id) -> bool:
    """Whether any of the organization's subscriptions (history included) had a trial: one each."""
    return Subscription.objects.filter(organization_id=organization_id, trial_end__isnull=False).exists()


def subscription_current(*, organization_id) -> Subscription | None:
    """The organization's one current subscription with its plan, or None when the
    context cannot see it (the caller is not a member)."""
    alias = rls.current_alias()
    return subscription_from_row(alias, fetch_one_prepared(alias, _CURRENT_SQL, [organization_id]))


def subscription_history(*, organization_id) -> QuerySet[Subscription]:
    return Subscription.objects.select_related("plan").filter(organization_id=organization_id).order_by("-created_at")


def grace_ends_at(subscription: Subscription) -> datetime | None:
    if subscription.status != Subscription.Status.PAST_DUE or subscription.past_due_since is None:
        return None
    return subscription.past_due_since + timedelta(days=settings.BILLING_GRACE_DAYS)


def plan_in_force(*, subscription: Subscription, now: datetime | None = None) -> Plan:
    """The plan whose limits apply now: past due beyond the grace period, an ended trial or
    a period that ended with a cancellation fall to free; a downgrade chosen for the
    period's end applies once it ends (before the periodic task writes it down)."""
    now = now or timezone.now()
    grace_end = grace_ends_at(subscription)
    if grace_end is not None and grace_end <= now:
        return plan_free()
    if subscription.status == Subscription.Status.TRIALING and subscription.trial_end and _trial_over(subscription) <= now:
        return plan_free()
    period_over = subscription.current_period_end is not None and subscription.current_period_end <= now
    if period_over and subscription.scheduled_plan_id:
        return subscription.scheduled_plan
    if period_over and subscription.cancel_at_period_end:
        return plan_free()
    return subscription.plan


def _trial_over(subscription: Subscription) -> datetime:
    """When a trial's plan stops applying. A trial Stripe runs ends when Stripe says so: it charges
    the card at the trial's end and sends the subscription's new status, which may arrive late (a
    webhook backlog, a deploy); meanwhile the plan paid for stays, for at most the grace days. A
    trial staff gave without Stripe ends on its date."""
    if subscription.stripe_subscription_id:
        return subscription.trial_end + timedelta(days=settings.BILLING_GRACE_DAYS)
    return subscription.trial_end


def month_reset(moment: datetime | None = None) -> date:
    """The first day of the next calendar month in UTC: when monthly limits reset."""
    return month_add(counters.month_of(moment), 1)


def role_in(*, user: User, organization_id) -> str | None:
    return accounts_selectors.organization_list(user=user).filter(pk=organization_id).values_list("role", flat=True).first()


def caller_manages(*, user: User, organization_id) -> bool:
    return role_in(user=user, organization_id=organization_id) in MANAGER_ROLES


@dataclass(frozen=True)
class LimitUsage:
    name: str
    label: str
    limit: int | None
    used: int | None

    @property
    def percent(self) -> int:
        if not self.limit or self.used is None:
            return 0
        return min(100, round(100 * self.used / self.limit))


def month_usage(*, organization_id) -> counters.Usage:
    """This month's usage: the live counter (rebuilt when missing), the database when Redis is down."""
    try:
        return counters.counters_read(scope="org", owner_id=organization_id)
    except REDIS_ERRORS as exc:
        logger.warning("usage for %s read from the database (Redis unreachable: %s)", organization_id, exc)
        return counters.usage_from_database(scope="org", owner_id=organization_id, month=counters.month_of())


@dataclass(frozen=True)
class SpendUsage:
    """The plan's monthly spend budget (money, so apart from the whole-number limits) and this month's spend."""

    limit: Decimal | None
    used: Decimal
    currency: str

    @property
    def percent(self) -> int:
        if not self.limit:
            return 0
        return min(100, round(100 * self.used / self.limit))


def usage_against_limits(*, organization: Organization, plan: Plan) -> tuple[list[LimitUsage], SpendUsage]:
    """This month's usage beside each limit of the plan, and its spend beside the spend budget.
    Requests per minute and conversations show their limit only (chat counts conversations)."""
    usage = month_usage(organization_id=organization.pk)
    limits = [
        LimitUsage("monthly_tokens", "Tokens this month", plan.monthly_tokens, usage.total_tokens),
        LimitUsage("monthly_messages", "Messages this month", plan.monthly_messages, usage.calls),
        LimitUsage("requests_per_minute", "Requests per minute", plan.requests_per_minute, None),
        LimitUsage("max_conversations", "Conversations", plan.max_conversations, None),
    ]
    return limits, SpendUsage(plan.monthly_spend, usage.cost, plan.currency)


def billing_page_path(organization_id) -> str:
    """The billing page of one organization: where its plan changes and Stripe's pages return to."""
    return f"{reverse('billing:page')}?org={organization_id}"


def payment_configured() -> bool:
    """Whether Stripe keys are set; without them staff change plans in admin."""
    return bool(getattr(settings, "STRIPE_SECRET_KEY", ""))


def period_end_for(*, start: datetime, interval: str, anchor_day: int | None = None) -> datetime:
    """A month (or a year) after `start`, on `anchor_day` (the start's day unless given), or the
    month's last day when it is shorter: a period started on 31 January ends on 28 February."""
    months = 12 if interval == Subscription.Interval.YEAR else 1
    start = start.astimezone(UTC)
    first = month_add(start.date().replace(day=1), months)
    day = min(anchor_day or start.day, calendar.monthrange(first.year, first.month)[1])
    return start.replace(year=first.year, month=first.month, day=day)


def period_next(subscription: Subscription) -> tuple[datetime, datetime]:
    """The period after the subscription's current one. It keeps the day the periods are anchored
    on: a period cut short by a short month (31 January to 28 February) ends on one boundary
    and began on the anchor's day, or the other way round (no two months in a row are both
    short of a day up to 31), so the later of its two days is the anchor, and the next period
    ends on 31 March, not 28. (A yearly period begun on 29 February has both its boundaries in
    February: from its second renewal on it ends on the 28th, a day early in a leap year.)"""
    start, end = subscription.current_period_start.astimezone(UTC), subscription.current_period_end
    anchor_day = max(start.day, end.astimezone(UTC).day)
    return end, period_end_for(start=end, interval=subscription.interval, anchor_day=anchor_day)


def subscription_overview(*, organization: Organization) -> dict:
    """What the billing page and API show: the current subscription, the plan in force,
    usage against each limit and when monthly limits reset."""
    subscription = subscription_current(organization_id=organization.pk)
    plan = plan_in_force(subscription=subscription)
    limits, spend = usage_against_limits(organization=organization, plan=plan)
    return {
        "subscription": subscription,
        "plan": plan,
        "limits": limits,
        "spend": spend,
        "resets_on": month_reset(),
        "grace_ends_at": grace_ends_at(subscription),
        "payment_configured": payment_configured(),
    }
