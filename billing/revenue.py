"""Revenue for staff, from the subscriptions table: organizations by plan and status, MRR,
ARR, paying organizations, trial conversions and churn this month. A task writes a
snapshot every hour; the staff page reads the snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import CURRENT_STATUSES, RevenueSnapshot, Subscription
from config.db import rls

CURRENCY = "usd"  # plans priced in another currency are left out of the money figures
CENT = Decimal("0.01")
PAYING = (Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE)
ENDED = (Subscription.Status.CANCELED, Subscription.Status.EXPIRED)
HISTORY_DAYS = 90


def _paid(queryset):
    return queryset.exclude(plan__monthly_price=0, plan__yearly_price=0)


def revenue_figures(*, now: datetime) -> dict:
    """The figures at `now` (read under the caller's context; the task runs privileged).
    MRR counts active and past-due paid subscriptions: the monthly price, or the yearly
    price / 12; ARR is 12 x MRR (both rounded to the cent once, from the exact sum)."""
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    current = Subscription.objects.filter(status__in=CURRENT_STATUSES)
    by_plan_status = [
        {"plan": row["plan__slug"], "plan_name": row["plan__name"], "status": row["status"], "organizations": row["organizations"]}
        for row in current.values("plan__slug", "plan__name", "plan__display_order", "status")
        .annotate(organizations=Count("organization_id", distinct=True))
        .order_by("plan__display_order", "plan__slug", "status")
    ]
    paying = _paid(current.filter(status__in=PAYING, plan__currency__iexact=CURRENCY))  # staff may type "USD"
    exact = Decimal(0)
    for interval, monthly, yearly in paying.values_list("interval", "plan__monthly_price", "plan__yearly_price"):
        # A plan sold only yearly is priced by the year whatever interval its row names.
        exact += yearly / 12 if interval == Subscription.Interval.YEAR or not monthly else monthly
    # A trial that ended this month and was paid for: its row active, or ended since (replaced by
    # a plan change, cancelled) from active. Past due after a trial is a first charge that failed.
    trial_ended = Subscription.objects.filter(trial_end__gte=month_start, trial_end__lte=now)
    converted = _paid(trial_ended.filter(Q(status=Subscription.Status.ACTIVE) | Q(ended_from=Subscription.Status.ACTIVE)))
    # A paid subscription that ended this month, for an organization now on a free plan; not a
    # trial that ended unpaid (nothing was paid to lose).
    free_now = current.filter(plan__monthly_price=0, plan__yearly_price=0).values("organization_id")
    churned = _paid(Subscription.objects.filter(status__in=ENDED, ended_at__gte=month_start, ended_at__lte=now)).filter(
        organization_id__in=free_now
    )
    churned = churned.exclude(ended_from=Subscription.Status.TRIALING)
    return {
        "by_plan_status": by_plan_status,
        "mrr": exact.quantize(CENT, ROUND_HALF_UP),
        "arr": (exact * 12).quantize(CENT, ROUND_HALF_UP),
        "paying_organizations": paying.values("organization_id").distinct().count(),
        "trial_conversions": converted.values("organization_id").distinct().count(),
        "churned_this_month": churned.values("organization_id").distinct().count(),
        "currency": CURRENCY,
    }


def revenue_snapshot_take(*, now: datetime | None = None) -> RevenueSnapshot:
    """Compute the figures across every organization and store them as one snapshot."""
    now = now or timezone.now()
    with rls.privileged(reason="billing: revenue snapshot"):
        return RevenueSnapshot.objects.create(taken_at=now, **revenue_figures(now=now))


def revenue_overview(*, now: datetime | None = None) -> dict:
    """For the staff page: the latest snapshot and the last snapshot of each of the last 90 days."""
    since = (now or timezone.now()) - timedelta(days=HISTORY_DAYS)
    with rls.privileged(reason="staff revenue dashboard"):
        latest = RevenueSnapshot.objects.first()
        daily = list(
            RevenueSnapshot.objects.filter(taken_at__gte=since)
            .annotate(day=TruncDate("taken_at", tzinfo=UTC))  # UTC days, whatever the staff page's zone
            .order_by("day", "-taken_at")
            .distinct("day")
            .values("day", "mrr", "paying_organizations")
        )
    return {"latest": latest, "daily": daily}
