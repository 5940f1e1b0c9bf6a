"""Idempotent demo usage for `make run`: 30 days of model calls for the demo user, rolled up."""

import random
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import Membership, User
from analytics import services
from analytics.models import TokenUsage
from config.db import rls

DEMO_EMAIL = "demo@confab.local"
MODELS = [
    ("openai", "gpt-4o", Decimal("2.50"), Decimal("10.00")),
    ("anthropic", "claude-sonnet", Decimal("3.00"), Decimal("15.00")),
    ("echo", "echo-1", Decimal("0"), Decimal("0")),
]


class Command(BaseCommand):
    help = "Record 30 days of demo model calls for the demo user (once) and roll them up."

    def handle(self, *args, **options):
        with rls.privileged(reason="demo usage seed"):
            user = User.objects.filter(email=DEMO_EMAIL).first()
            if user is None:
                raise CommandError(f"{DEMO_EMAIL} does not exist: run `manage.py demo_data` first.")
            organization_id = (
                Membership.objects.filter(user=user, organization__is_personal=True).values_list("organization_id", flat=True).first()
            )
            # Once: request ids alone kept a rerun from recording anything only for the 7 days they are
            # kept (USAGE_DEDUPE_WINDOW); a `make run` a week later recorded the 30 days again.
            recorded_before = TokenUsage.objects.filter(user_id=user.pk, request_id__startswith="demo-").exists()
            rng = random.Random(42)  # the same demo every time
            now = timezone.now()
            records = []
            for day in range(30):
                for call in range(rng.randint(2, 8)):
                    provider, model, input_price, output_price = rng.choice(MODELS)
                    records.append(
                        {
                            "user_id": user.pk,
                            "organization_id": organization_id,
                            "provider": provider,
                            "model": model,
                            "input_tokens": rng.randint(50, 2000),
                            "output_tokens": rng.randint(20, 800),
                            "input_price": input_price,
                            "output_price": output_price,
                            "request_id": f"demo-{day}-{call}",
                            "latency_ms": rng.randint(200, 4000),
                            "created_at": now - timedelta(days=day, minutes=rng.randint(0, 600)),
                        }
                    )
            written = 0 if recorded_before else services.usage_record_batch(records=records)
        services.usage_rollup()
        self.stdout.write(f"Demo usage: {written} new model calls recorded for {DEMO_EMAIL}.")
