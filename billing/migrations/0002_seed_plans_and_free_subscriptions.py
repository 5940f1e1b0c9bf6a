"""Seed the free, pro and enterprise plans (values frozen here) and put every existing
organization without a current subscription on the free plan."""

from decimal import Decimal

from django.db import migrations
from django.utils import timezone

PROVIDERS = ["echo", "openai", "anthropic", "gemini"]
PLANS = [
    {
        "slug": "free",
        "name": "Free",
        "description": "Try Confab with the smaller models.",
        "monthly_price": Decimal("0.00"),
        "yearly_price": Decimal("0.00"),
        "features": {"highlights": ["Smaller models", "100,000 tokens a month", "Community support"]},
        "allowed_providers": PROVIDERS,
        "allowed_models": ["echo-1", "gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.5-flash"],
        "monthly_tokens": 100_000,
        "monthly_messages": 1_000,
        "requests_per_minute": 10,
        "max_conversations": 20,
        "trial_days": 0,
        "display_order": 0,
    },
    {
        "slug": "pro",
        "name": "Pro",
        "description": "Every model, for individuals and small teams.",
        "monthly_price": Decimal("20.00"),
        "yearly_price": Decimal("200.00"),
        "features": {"highlights": ["Every model", "5,000,000 tokens a month", "Email support"]},
        "allowed_providers": PROVIDERS,
        "allowed_models": [],
        "monthly_tokens": 5_000_000,
        "monthly_messages": 20_000,
        "requests_per_minute": 60,
        "max_conversations": 1_000,
        "trial_days": 14,
        "display_order": 1,
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "description": "High limits and priority support for organizations.",
        "monthly_price": Decimal("200.00"),
        "yearly_price": Decimal("2000.00"),
        "features": {"highlights": ["Every model", "100,000,000 tokens a month", "Unlimited messages and conversations"]},
        "allowed_providers": PROVIDERS,
        "allowed_models": [],
        "monthly_tokens": 100_000_000,
        "monthly_messages": None,
        "requests_per_minute": 600,
        "max_conversations": None,
        "trial_days": 0,
        "display_order": 2,
    },
]
CURRENT_STATUSES = ["trialing", "active", "past_due"]


def seed(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    Subscription = apps.get_model("billing", "Subscription")
    Organization = apps.get_model("accounts", "Organization")
    db = schema_editor.connection.alias  # the owner role running migrate, not the web role
    for values in PLANS:
        Plan.objects.using(db).get_or_create(slug=values["slug"], defaults={k: v for k, v in values.items() if k != "slug"})
    free = Plan.objects.using(db).get(slug="free")
    now = timezone.now()
    covered = Subscription.objects.using(db).filter(status__in=CURRENT_STATUSES).values("organization_id")
    Subscription.objects.using(db).bulk_create(
        Subscription(organization_id=org_id, plan=free, interval="month", status="active", current_period_start=now)
        for org_id in Organization.objects.using(db).exclude(id__in=covered).values_list("id", flat=True)
    )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_plans_subscriptions_stripe_events")]

    # Nothing to undo: reversing 0001 drops the tables these rows live in.
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
