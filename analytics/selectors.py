"""Usage reads for the dashboards and the usage API.

They read the rollups (exact daily and monthly totals), never the ledger. Under the
request's row-level security context a user sees their own rollup rows and those of
their organizations, so user-facing reads filter on the user (their own usage) or on an
organization they administer (usage by member). Days are UTC days, as in the rollups.
Costs are Decimals exact to 1e-10 USD (rounded only where shown); the staff overview reads across tenants in the
audited privileged context.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connections
from django.db.models import Count, DecimalField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from accounts import selectors as accounts_selectors
from analytics.errors import UsageAccessDenied, UsageQueryInvalid
from analytics.models import ApiLog, UsageRollup
from config.db import rls
from config.db.rows import fetch_one_prepared

PERIODS = ("day", "week", "month", "30d")
GROUPINGS = ("model", "provider", "user")
MAX_RANGE_DAYS = 366
COST_PLACES = Decimal("0.0000000001")
COUNTS = ("input_tokens", "output_tokens", "total_tokens", "calls", "errors")
# Parts of the totals above, per token class, and what Confab's response cache saved.
CLASS_COUNTS = ("cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens", "cache_hits", "saved_tokens")
AMOUNTS = ("cost", "saved_cost")
STAFF_TOP = 10
DAILY_CHART_DAYS = 30
PER_MILLION = Decimal("1000000")

DAY, MONTH = UsageRollup.Period.DAY, UsageRollup.Period.MONTH


def usage_today() -> date:
    """Today as the rollups count days: in UTC."""
    return timezone.now().astimezone(UTC).date()


def period_bounds(*, period: str, today: date | None = None) -> tuple[date, date]:
    """First and last day (inclusive) of a period ending today: the day, the calendar week
    (from Monday), the calendar month, or the last 30 days."""
    today = today or usage_today()
    starts = {
        "day": today,
        "week": today - timedelta(days=today.weekday()),
        "month": today.replace(day=1),
        "30d": today - timedelta(days=29),
    }
    if period not in starts:
        raise UsageQueryInvalid(f"Unknown period '{period}': use day, week, month or 30d.", {"field": "period", "choices": list(PERIODS)})
    return starts[period], today


def date_range_check(*, start: date, end: date) -> None:
    if start > end:
        raise UsageQueryInvalid("The start date must be on or before the end date.", {"field": "from"})
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise UsageQueryInvalid(f"A date range covers at most {MAX_RANGE_DAYS} days.", {"field": "to", "max_days": MAX_RANGE_DAYS})


def _sums() -> dict:
    zero = Value(Decimal(0), output_field=DecimalField(max_digits=24, decimal_places=10))
    return {**{name: Coalesce(Sum(name), 0) for name in (*COUNTS, *CLASS_COUNTS)}, **{name: Coalesce(Sum(name), zero) for name in AMOUNTS}}


def _totals(row: dict) -> dict:
    counts = {name: int(row.get(name) or 0) for name in (*COUNTS, *CLASS_COUNTS)}
    return {**counts, **{name: Decimal(row.get(name) or 0).quantize(COST_PLACES) for name in AMOUNTS}}


def _zero() -> dict:
    return _totals({})


def _add(into: dict, row: dict) -> dict:
    for name in (*COUNTS, *CLASS_COUNTS, *AMOUNTS):
        into[name] += row[name]
    return into


def _own(user) -> QuerySet[UsageRollup]:
    return UsageRollup.objects.filter(user_id=user.pk)


def _administered_ids(*, user, organization_id=None) -> list:
    """The organizations whose usage by member the user may see (owner or admin), or refuse."""
    organizations = accounts_selectors.organization_list_administered(user=user)
    if organization_id is not None:
        organizations = organizations.filter(pk=organization_id)
    ids = list(organizations.values_list("pk", flat=True))
    if not ids:
        if organization_id is not None:
            message = "Only this organization's owners and admins can see its usage by member."
        else:
            message = "Usage by member is for owners and admins of an organization; you administer none."
        raise UsageAccessDenied(message, {"code": "not_organization_admin"})
    return ids


# The summary's one statement, prepared (config/db/rows.prepared_cursor): the same sums as _sums(),
# whose thirteen expressions the ORM resolved and compiled on every call (3.3 ms of CPU a request,
# ten times the query's own; docs/performance.md). Row-level security applies as to the ORM's.
_SUMMED = (*COUNTS, *CLASS_COUNTS, *AMOUNTS)
_SUMMARY_SQL = (
    "SELECT "
    + ", ".join(f"coalesce(sum({UsageRollup._meta.get_field(name).column}), 0)" for name in _SUMMED)
    + f" FROM {UsageRollup._meta.db_table} WHERE user_id = %s AND period = %s AND period_start BETWEEN %s AND %s"
)


def usage_summary(*, user, period: str, today: date | None = None) -> dict:
    """The user's own totals over a period: tokens, calls, errors, cost, and its first and last day."""
    start, end = period_bounds(period=period, today=today)
    # The month's rollup row, or the days' rows in the period.
    kind, last = (MONTH, start) if period == "month" else (DAY, end)
    row = fetch_one_prepared(rls.current_alias(), _SUMMARY_SQL, [user.pk, kind, start, last])
    return {"period": period, "period_start": start, "period_end": end, **_totals(dict(zip(_SUMMED, row, strict=True)))}


def usage_daily(*, user, start: date, end: date, group_by: str, organization_id=None) -> list[dict]:
    """Daily totals from `start` to `end` (inclusive), one row per day and key, days without usage left out.

    group_by "model" or "provider": the user's own usage (in one organization when given);
    "user": usage by member of the organizations the user administers (or the one given),
    keyed by user id and labelled with the member's name.
    """
    date_range_check(start=start, end=end)
    if group_by not in GROUPINGS:
        raise UsageQueryInvalid(
            f"Unknown grouping '{group_by}': use model, provider or user.", {"field": "group_by", "choices": list(GROUPINGS)}
        )
    rows = UsageRollup.objects.filter(period=DAY, period_start__range=(start, end))
    names = {}
    if group_by == "user":
        organization_ids = _administered_ids(user=user, organization_id=organization_id)
        rows = rows.filter(organization_id__in=organization_ids)
        names = accounts_selectors.member_names(organization_ids=organization_ids)
        column = "user_id"
    else:
        rows = rows.filter(user_id=user.pk)
        if organization_id is not None:
            rows = rows.filter(organization_id=organization_id)
        column = group_by
    grouped = rows.values("period_start", column).annotate(**_sums()).order_by("period_start", column)
    return [
        {
            "date": row["period_start"],
            "key": str(row[column]),
            "label": names.get(row[column], "Former member") if group_by == "user" else row[column],
            **_totals(row),
        }
        for row in grouped
    ]


def usage_by_model(*, user, month: date) -> list[dict]:
    """The user's own usage in a month per provider and model, most costly first."""
    rows = (
        _own(user)
        .filter(period=MONTH, period_start=month.replace(day=1))
        .values("provider", "model")
        .annotate(**_sums())
        .order_by("-cost", "-total_tokens", "provider", "model")
    )
    return [{"provider": row["provider"], "model": row["model"], **_totals(row)} for row in rows]


def usage_by_member(*, user, organization_id, month: date) -> list[dict]:
    """An organization's usage in a month per member, most costly first; every current member is
    listed (with zeros when idle), former members with usage too. Owners and admins only."""
    _administered_ids(user=user, organization_id=organization_id)
    names = accounts_selectors.member_names(organization_ids=[organization_id])
    rows = (
        UsageRollup.objects.filter(period=MONTH, period_start=month.replace(day=1), organization_id=organization_id)
        .values("user_id")
        .annotate(**_sums())
    )
    usage = {row["user_id"]: _totals(row) for row in rows}
    members = [
        {"user_id": user_id, "name": names.get(user_id, "Former member"), "is_member": user_id in names, **usage.get(user_id, _zero())}
        for user_id in {*names, *usage}
    ]
    return sorted(members, key=lambda m: (-m["cost"], -m["total_tokens"], m["name"], str(m["user_id"])))


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def staff_usage_overview(*, today: date | None = None, now: datetime | None = None) -> dict:
    """Across every tenant, for staff: this month's totals and active users, the top users and
    organizations by cost, usage per provider and model, the last 30 days, and the API's
    error rates over the last 24 hours (hour by hour)."""
    today = today or usage_today()
    now = now or timezone.now()
    month = today.replace(day=1)
    since = now - timedelta(hours=24)
    chart_start = today - timedelta(days=DAILY_CHART_DAYS - 1)
    with rls.privileged(reason="staff usage dashboard"):
        monthly = UsageRollup.objects.filter(period=MONTH, period_start=month)
        totals = monthly.aggregate(**_sums(), active_users=Count("user_id", distinct=True))
        top_users = list(
            monthly.values("user_id", "user__email").annotate(**_sums()).order_by("-cost", "-total_tokens", "user_id")[:STAFF_TOP]
        )
        top_organizations = list(
            monthly.values("organization_id", "organization__name")
            .annotate(**_sums())
            .order_by("-cost", "-total_tokens", "organization_id")[:STAFF_TOP]
        )
        by_model = list(monthly.values("provider", "model").annotate(**_sums()).order_by("-cost", "-total_tokens", "provider", "model"))
        daily = {
            row["period_start"]: row
            for row in UsageRollup.objects.filter(period=DAY, period_start__range=(chart_start, today))
            .values("period_start")
            .annotate(**_sums())
        }
        hours = list(
            ApiLog.objects.filter(created_at__gte=since, created_at__lte=now)
            .annotate(hour=TruncHour("created_at", tzinfo=UTC))  # UTC hours, as laid out below, whatever the page's zone
            .values("hour")
            .annotate(
                requests=Count("id"),
                client_errors=Count("id", filter=Q(status__gte=400, status__lt=500)),
                server_errors=Count("id", filter=Q(status__gte=500)),
            )
            .order_by("hour")
        )
    by_provider: dict[str, dict] = {}
    for row in by_model:
        _add(by_provider.setdefault(row["provider"], _zero()), _totals(row))
    counted = {h["hour"]: h for h in hours}
    first_hour = since.replace(minute=0, second=0, microsecond=0)
    hours = [
        counted.get(hour, {"hour": hour, "requests": 0, "client_errors": 0, "server_errors": 0})
        for hour in (first_hour + timedelta(hours=n) for n in range(25))
        if hour <= now
    ]
    requests = sum(h["requests"] for h in hours)
    client_errors = sum(h["client_errors"] for h in hours)
    server_errors = sum(h["server_errors"] for h in hours)
    return {
        "month": month,
        "totals": {**_totals(totals), "active_users": totals["active_users"]},
        "top_users": [{"user_id": r["user_id"], "email": r["user__email"], **_totals(r)} for r in top_users],
        "top_organizations": [
            {"organization_id": r["organization_id"], "name": r["organization__name"], **_totals(r)} for r in top_organizations
        ],
        "by_provider": sorted(({"provider": p, **t} for p, t in by_provider.items()), key=lambda r: (-r["cost"], r["provider"])),
        "by_model": [{"provider": r["provider"], "model": r["model"], **_totals(r)} for r in by_model],
        "daily": [{"date": day, **_totals(daily.get(day, {}))} for day in _days(chart_start, today)],
        "api": {
            "since": since,
            "requests": requests,
            "client_errors": client_errors,
            "server_errors": server_errors,
            # Shares of all requests: answered with a status of 400 or more, and of 500 or more.
            "error_rate": (client_errors + server_errors) / requests if requests else 0.0,
            "server_error_rate": server_errors / requests if requests else 0.0,
            "hours": hours,
        },
    }


# The platform keys' calls per UTC day and model, each class's tokens, what the ledger charged for
# them (USD per million tokens x tokens) and the newest rate used. Cache hits never reached the provider.
_PLATFORM_USAGE_SQL = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, model,
       sum(input_tokens - cache_read_tokens - cache_write_5m_tokens - cache_write_1h_tokens),
       sum(cache_read_tokens), sum(cache_write_5m_tokens), sum(cache_write_1h_tokens), sum(output_tokens),
       sum((input_tokens - cache_read_tokens - cache_write_5m_tokens - cache_write_1h_tokens) * input_price),
       sum(cache_read_tokens * COALESCE(cache_read_price, 0)), sum(cache_write_5m_tokens * COALESCE(cache_write_5m_price, 0)),
       sum(cache_write_1h_tokens * COALESCE(cache_write_1h_price, 0)), sum(output_tokens * output_price),
       (array_agg(input_price ORDER BY created_at DESC, id DESC))[1],
       (array_agg(cache_read_price ORDER BY created_at DESC, id DESC) FILTER (WHERE cache_read_tokens > 0))[1],
       (array_agg(cache_write_5m_price ORDER BY created_at DESC, id DESC) FILTER (WHERE cache_write_5m_tokens > 0))[1],
       (array_agg(cache_write_1h_price ORDER BY created_at DESC, id DESC) FILTER (WHERE cache_write_1h_tokens > 0))[1],
       (array_agg(output_price ORDER BY created_at DESC, id DESC))[1]
FROM analytics_tokenusage
WHERE provider = %(provider)s AND key_source IN ('managed', 'free_tier') AND NOT cache_hit
  AND created_at >= %(start)s AND created_at < %(end)s
GROUP BY 1, 2
"""
PLATFORM_CLASSES = ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h", "output")


def platform_usage_by_day(*, provider: str, start: date, end: date) -> dict[tuple[date, str], dict[str, dict]]:
    """The ledger's calls on the platform's keys ('managed', 'free_tier') for a provider, from
    `start` to `end` (inclusive, UTC days), per (day, model) and token class: tokens, the USD the
    ledger charged for them (exact, at the rates on its rows) and the newest rate (None if unused)."""
    bounds = {
        "provider": provider,
        "start": datetime(start.year, start.month, start.day, tzinfo=UTC),
        "end": datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1),
    }
    with (
        rls.privileged(reason="usage reconciliation: platform keys' ledger totals per day and model", audited=False),
        connections[rls.PRIVILEGED_ALIAS].cursor() as cur,
    ):
        cur.execute(_PLATFORM_USAGE_SQL, bounds)
        rows = cur.fetchall()
    n = len(PLATFORM_CLASSES)
    return {
        (day, model): {
            name: {"tokens": int(values[i]), "cost": values[n + i] / PER_MILLION, "rate": values[2 * n + i]}
            for i, name in enumerate(PLATFORM_CLASSES)
        }
        for day, model, *values in rows
    }
