"""Usage pages: /usage/ (your usage; by member for organizations you administer) and
/usage/staff/ (every tenant, staff only).

Figures come from the rollups through analytics.selectors; this month's headline figures
come from the live counters (the ones plan limits will be checked against). Charts are
Chart.js configurations in `data-chart` attributes (static/js/app.js draws them).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, timedelta

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts import selectors as accounts_selectors
from accounts.decorators import login_required
from analytics import counters, selectors
from billing import selectors as billing_selectors

CHART_MODELS = 5  # the daily chart stacks the costliest models; the rest are "Other models"
API_COLORS = {"ok": "#10b981", "client": "#f59e0b", "server": "#ef4444"}


def _chart(config: dict) -> str:
    return json.dumps(config, separators=(",", ":"))


def _day_label(day: date) -> str:
    return f"{day:%b} {day.day}"


def _tokens_and_cost_chart(days: list[date], stacks: dict[str, dict[date, int]], cost: dict[date, float]) -> str:
    """Stacked token bars (left axis) and a cost line (right axis), one point per day."""
    datasets = [
        {
            "type": "line",
            "label": "Cost (USD)",
            "data": [round(cost.get(d, 0), 6) for d in days],
            "yAxisID": "cost",
            "cubicInterpolationMode": "monotone",
            "pointRadius": 2,
            "order": 0,
        }
    ]
    datasets += [
        {"label": label, "data": [series.get(d, 0) for d in days], "stack": "tokens", "yAxisID": "tokens", "order": 1}
        for label, series in stacks.items()
    ]
    return _chart(
        {
            "type": "bar",
            "data": {"labels": [_day_label(d) for d in days], "datasets": datasets},
            "options": {
                "interaction": {"mode": "index", "intersect": False},
                "plugins": {"legend": {"position": "bottom"}},
                "scales": {
                    "x": {"stacked": True, "grid": {"display": False}},
                    "tokens": {
                        "type": "linear",
                        "position": "left",
                        "stacked": True,
                        "beginAtZero": True,
                        "title": {"display": True, "text": "Tokens"},
                    },
                    "cost": {
                        "type": "linear",
                        "position": "right",
                        "beginAtZero": True,
                        "grid": {"drawOnChartArea": False},
                        "title": {"display": True, "text": "Cost (USD)"},
                    },
                },
            },
        }
    )


def _daily_by_model_chart(rows: list[dict], start: date, end: date) -> str:
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    spent: dict[str, float] = defaultdict(float)
    for row in rows:
        spent[row["key"]] += float(row["cost"])
    top = sorted(spent, key=lambda model: (-spent[model], model))[:CHART_MODELS]
    stacks: dict[str, dict[date, int]] = {model: defaultdict(int) for model in top}
    cost: dict[date, float] = defaultdict(float)
    for row in rows:
        label = row["key"] if row["key"] in stacks else "Other models"
        stacks.setdefault(label, defaultdict(int))[row["date"]] += row["total_tokens"]
        cost[row["date"]] += float(row["cost"])
    if not stacks:
        stacks = {"Tokens": {}}
    return _tokens_and_cost_chart(days, stacks, cost)


def _organization_chosen(request, organizations: list):
    """The organization the "By member" section shows: ?organization=<id>, else the first one."""
    if not organizations:
        return None
    wanted = request.GET.get("organization")
    if not wanted:
        return organizations[0]
    for organization in organizations:
        if str(organization.pk) == wanted:
            return organization
    raise Http404("No organization you administer has this id.")


@login_required
@require_GET
def dashboard(request):
    user = request.user
    today = selectors.usage_today()
    month = today.replace(day=1)
    start = today - timedelta(days=selectors.DAILY_CHART_DAYS - 1)
    organizations = list(accounts_selectors.organization_list_administered(user=user))
    organization = _organization_chosen(request, organizations)
    context = {
        "month": month,
        "month_to_date": counters.counters_read(scope="user", owner_id=user.pk),
        # Limits are an organization's plan's; a user's own figures span every organization they send in.
        "across": "Yours, in every organization",
        "daily_chart": _daily_by_model_chart(selectors.usage_daily(user=user, start=start, end=today, group_by="model"), start, today),
        "by_model": (by_model := selectors.usage_by_model(user=user, month=month)),
        "cache_saved": {name: sum(row[name] for row in by_model) for name in ("cache_hits", "saved_tokens", "saved_cost")},
        "organizations": organizations,
        "organization": organization,
    }
    if organization is not None:
        context["organization_month_to_date"] = counters.counters_read(scope="org", owner_id=organization.pk)
        context["organization_plan"] = billing_selectors.plan_in_force(
            subscription=billing_selectors.subscription_current(organization_id=organization.pk)
        )
        context["members"] = selectors.usage_by_member(user=user, organization_id=organization.pk, month=month)
    return render(request, "analytics/dashboard.html", context)


def _provider_chart(by_provider: list[dict]) -> str:
    return _chart(
        {
            "type": "doughnut",
            "data": {
                "labels": [row["provider"] for row in by_provider],
                "datasets": [{"label": "Cost (USD)", "data": [float(row["cost"]) for row in by_provider]}],
            },
            "options": {"plugins": {"legend": {"position": "bottom"}}},
        }
    )


def _model_chart(by_model: list[dict]) -> str:
    top = by_model[:10]
    return _chart(
        {
            "type": "bar",
            "data": {
                "labels": [f"{row['provider']}/{row['model']}" for row in top],
                "datasets": [{"label": "Total tokens", "data": [row["total_tokens"] for row in top]}],
            },
            "options": {"indexAxis": "y", "plugins": {"legend": {"display": False}}, "scales": {"x": {"beginAtZero": True}}},
        }
    )


def _api_chart(hours: list[dict]) -> str:
    """API requests per hour, stacked by outcome."""

    def series(label, color, values):
        return {"label": label, "data": values, "stack": "requests", "backgroundColor": color, "borderColor": color}

    datasets = [
        series("Below 400", API_COLORS["ok"], [h["requests"] - h["client_errors"] - h["server_errors"] for h in hours]),
        series("4xx", API_COLORS["client"], [h["client_errors"] for h in hours]),
        series("5xx", API_COLORS["server"], [h["server_errors"] for h in hours]),
    ]
    return _chart(
        {
            "type": "bar",
            "data": {"labels": [f"{h['hour']:%H}:00" for h in hours], "datasets": datasets},
            "options": {
                "plugins": {"legend": {"position": "bottom"}},
                "scales": {"x": {"stacked": True, "grid": {"display": False}}, "y": {"stacked": True, "beginAtZero": True}},
            },
        }
    )


@login_required
@require_GET
def staff_dashboard(request):
    if not request.user.is_staff:
        raise PermissionDenied("The usage of every tenant is for staff only.")
    overview = selectors.staff_usage_overview()
    days = [row["date"] for row in overview["daily"]]
    context = {
        "overview": overview,
        "daily_chart": _tokens_and_cost_chart(
            days,
            {
                "Input tokens": {r["date"]: r["input_tokens"] for r in overview["daily"]},
                "Output tokens": {r["date"]: r["output_tokens"] for r in overview["daily"]},
            },
            {r["date"]: float(r["cost"]) for r in overview["daily"]},
        ),
        "provider_chart": _provider_chart(overview["by_provider"]),
        "model_chart": _model_chart(overview["by_model"]),
        "api_chart": _api_chart(overview["api"]["hours"]),
    }
    return render(request, "analytics/staff.html", context)
