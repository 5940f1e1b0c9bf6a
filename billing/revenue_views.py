"""/billing/staff/: revenue across every organization, for staff (next to /usage/staff/)."""

import json

from django.core.exceptions import PermissionDenied
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.decorators import login_required
from billing import revenue

STATUS_COLORS = {"trialing": "#6366f1", "active": "#10b981", "past_due": "#f59e0b"}


def _chart(config: dict) -> str:
    return json.dumps(config, separators=(",", ":"))


def _mrr_chart(daily: list[dict]) -> str:
    return _chart(
        {
            "type": "line",
            "data": {
                "labels": [f"{row['day']:%b} {row['day'].day}" for row in daily],
                "datasets": [{"label": "MRR (USD)", "data": [float(row["mrr"]) for row in daily], "pointRadius": 2}],
            },
            "options": {"plugins": {"legend": {"display": False}}, "scales": {"y": {"beginAtZero": True}}},
        }
    )


def _plans_chart(by_plan_status: list[dict]) -> str:
    # By slug: plan names need not be unique (a retired "Pro" and its successor); a name two plans
    # share is labelled with each slug.
    names = dict.fromkeys((row["plan"], row["plan_name"]) for row in by_plan_status)
    shared = {name for _, name in names if sum(other == name for _, other in names) > 1}
    plans = [slug for slug, _ in names]
    labels = [f"{name} ({slug})" if name in shared else name for slug, name in names]
    counts = {(row["plan"], row["status"]): row["organizations"] for row in by_plan_status}
    datasets = [
        {
            "label": status.replace("_", " "),
            "data": [counts.get((plan, status), 0) for plan in plans],
            "stack": "s",
            "backgroundColor": color,
        }
        for status, color in STATUS_COLORS.items()
    ]
    return _chart(
        {
            "type": "bar",
            "data": {"labels": labels, "datasets": datasets},
            "options": {
                "plugins": {"legend": {"position": "bottom"}},
                "scales": {"x": {"stacked": True}, "y": {"stacked": True, "beginAtZero": True}},
            },
        }
    )


@login_required
@require_GET
def staff_revenue(request):
    if not request.user.is_staff:
        raise PermissionDenied("Revenue across organizations is for staff only.")
    overview = revenue.revenue_overview()
    latest = overview["latest"]
    context = {
        "latest": latest,
        "mrr_chart": _mrr_chart(overview["daily"]),
        "plans_chart": _plans_chart(latest.by_plan_status if latest else []),
    }
    return render(request, "billing/staff_revenue.html", context)
