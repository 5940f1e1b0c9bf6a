"""Billing test data: the three plans with known limits (a transactional test's flush
removes the seeded rows), and organizations on a chosen plan."""

from decimal import Decimal

from accounts.models import Membership, Organization
from billing.models import Plan, Subscription
from config.db import rls

PROVIDERS = ["echo", "openai", "anthropic", "gemini"]
PLANS = {
    "free": {
        "name": "Free",
        "monthly_price": Decimal("0"),
        "yearly_price": Decimal("0"),
        "allowed_providers": PROVIDERS,
        "allowed_models": ["echo-1", "gpt-4o-mini"],
        "monthly_tokens": 100_000,
        "monthly_messages": 1_000,
        "requests_per_minute": 10,
        "max_conversations": 20,
        "display_order": 0,
    },
    "pro": {
        "name": "Pro",
        "monthly_price": Decimal("20.00"),
        "yearly_price": Decimal("200.00"),
        "allowed_providers": PROVIDERS,
        "allowed_models": [],
        "monthly_tokens": 5_000_000,
        "monthly_messages": 20_000,
        "requests_per_minute": 60,
        "max_conversations": 1_000,
        "trial_days": 14,
        "display_order": 1,
    },
    "enterprise": {
        "name": "Enterprise",
        "monthly_price": Decimal("200.00"),
        "yearly_price": Decimal("2000.00"),
        "allowed_providers": PROVIDERS,
        "allowed_models": [],
        "monthly_tokens": 100_000_000,
        "monthly_messages": None,
        "requests_per_minute": 600,
        "max_conversations": None,
        "display_order": 2,
    },
}


def make_plans() -> dict[str, Plan]:
    with rls.privileged(reason="test factory"):
        return {slug: Plan.objects.update_or_create(slug=slug, defaults=values)[0] for slug, values in PLANS.items()}


def plan_with_limits(slug: str, **limits) -> Plan:
    """A plan with no limit but the ones given (and the tier's other fields at their defaults)."""
    values = {
        "name": slug.title(),
        "monthly_tokens": None,
        "monthly_messages": None,
        "requests_per_minute": None,
        "max_conversations": None,
        "allowed_providers": [],
        "allowed_models": [],
        **limits,
    }
    with rls.privileged(reason="test factory: a plan with chosen limits"):
        return Plan.objects.update_or_create(slug=slug, defaults=values)[0]


def organization_of(user) -> Organization:
    with rls.privileged(reason="test factory"):
        return Membership.objects.select_related("organization").get(user=user, organization__is_personal=True).organization


def current_subscription(organization) -> Subscription:
    with rls.privileged(reason="test factory"):
        return Subscription.objects.select_related("plan").get(organization=organization, status__in=["trialing", "active", "past_due"])


def put_on_plan(organization, plan: Plan, **fields) -> Subscription:
    """Set the organization's current subscription to `plan` directly (staff would, in admin)."""
    with rls.privileged(reason="test factory"):
        subscription = Subscription.objects.get(organization=organization, status__in=["trialing", "active", "past_due"])
        subscription.plan = plan
        for name, value in fields.items():
            setattr(subscription, name, value)
        subscription.save()
    return subscription
