"""Revenue snapshots for staff: row-level security forced with no policy that lets a web
request read or write a row; the task and the staff page use the worker role (BYPASSRLS)."""

import uuid

import django.utils.timezone
from django.db import migrations, models

from config.db.operations import CreatePolicy, EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_stripe_event_received")]

    operations = [
        migrations.CreateModel(
            name="RevenueSnapshot",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("taken_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                ("by_plan_status", models.JSONField(blank=True, default=list)),
                ("mrr", models.DecimalField(decimal_places=2, max_digits=14)),
                ("arr", models.DecimalField(decimal_places=2, max_digits=16)),
                ("paying_organizations", models.PositiveIntegerField(default=0)),
                ("trial_conversions", models.PositiveIntegerField(default=0)),
                ("churned_this_month", models.PositiveIntegerField(default=0)),
                ("currency", models.CharField(default="usd", max_length=3)),
            ],
            options={"ordering": ["-taken_at"]},
        ),
        EnableRowLevelSecurity("billing_revenuesnapshot"),
        CreatePolicy("billing_revenuesnapshot", "billing_revenuesnapshot_staff_only", using="false"),
    ]
