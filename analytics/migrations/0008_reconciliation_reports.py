"""Reconciliation reports: the provider's usage report against the ledger, for staff only.

Platform data (the platform's own keys, per day and model; no user's rows): the app role
holds no grant on either table, and row-level security is forced with no policy, so even a
grant given by mistake shows it nothing. The worker role (BYPASSRLS) writes and reads them;
rls_audit allowlists both with this reason.
"""

import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

from config.db.operations import EnableRowLevelSecurity

TABLES = ("analytics_reconciliationreport", "analytics_reconciliationline")


def _app_role(schema_editor) -> str:
    from django.conf import settings  # the role's name is deployment configuration, not app code

    return schema_editor.quote_name(settings.DATABASES["default"]["USER"])


def revoke_app_role(apps, schema_editor):
    for table in TABLES:
        schema_editor.execute(f"REVOKE ALL ON {table} FROM {_app_role(schema_editor)}")


def grant_app_role(apps, schema_editor):
    for table in TABLES:
        schema_editor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {_app_role(schema_editor)}")


class Migration(migrations.Migration):
    dependencies = [("analytics", "0007_ledger_token_classes_exact_cost")]

    operations = [
        migrations.CreateModel(
            name="ReconciliationReport",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("provider", models.CharField(max_length=32)),
                ("date_from", models.DateField()),
                ("date_to", models.DateField()),
                ("source", models.CharField(help_text="The provider's API, or the file read", max_length=300)),
                (
                    "tolerance",
                    models.DecimalField(decimal_places=10, help_text="Largest drift allowed, as a fraction of the ledger", max_digits=12),
                ),
                ("within_tolerance", models.BooleanField()),
                ("ledger_tokens", models.BigIntegerField(default=0)),
                ("provider_tokens", models.BigIntegerField(default=0)),
                ("ledger_cost", models.DecimalField(decimal_places=10, default=0, max_digits=24)),
                (
                    "drift_cost",
                    models.DecimalField(decimal_places=10, default=0, help_text="Priced drift only (provider minus ledger)", max_digits=24),
                ),
                ("days_missing_in_ledger", models.JSONField(blank=True, default=list)),
                ("days_missing_at_provider", models.JSONField(blank=True, default=list)),
                ("summary", models.TextField()),
            ],
            options={"db_table": "analytics_reconciliationreport", "ordering": ["-created_at"]},
        ),
        migrations.CreateModel(
            name="ReconciliationLine",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("day", models.DateField()),
                ("model", models.CharField(max_length=100)),
                (
                    "token_class",
                    models.CharField(
                        choices=[
                            ("input_uncached", "Uncached input"),
                            ("cache_read", "Cache read"),
                            ("cache_write_5m", "Cache write (5 minutes)"),
                            ("cache_write_1h", "Cache write (1 hour)"),
                            ("output", "Output"),
                        ],
                        max_length=16,
                    ),
                ),
                ("ledger_tokens", models.BigIntegerField()),
                ("provider_tokens", models.BigIntegerField()),
                ("drift_tokens", models.BigIntegerField(help_text="Provider minus ledger")),
                (
                    "rate",
                    models.DecimalField(
                        blank=True, decimal_places=6, help_text="USD per million tokens; null: unpriced", max_digits=12, null=True
                    ),
                ),
                ("ledger_cost", models.DecimalField(decimal_places=10, max_digits=24)),
                (
                    "drift_cost",
                    models.DecimalField(blank=True, decimal_places=10, help_text="Null when no rate is known", max_digits=24, null=True),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("matched", "Matched"),
                            ("drift", "Drift"),
                            ("missing_in_ledger", "Missing in the ledger"),
                            ("missing_at_provider", "Missing at the provider"),
                        ],
                        max_length=20,
                    ),
                ),
                ("over_tolerance", models.BooleanField()),
                (
                    "report",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="lines", to="analytics.reconciliationreport"
                    ),
                ),
            ],
            options={
                "db_table": "analytics_reconciliationline",
                "ordering": ["day", "model", "token_class"],
                "constraints": [
                    models.UniqueConstraint(fields=("report", "day", "model", "token_class"), name="analytics_reconciliationline_key")
                ],
            },
        ),
        *[EnableRowLevelSecurity(table) for table in TABLES],
        migrations.RunPython(revoke_app_role, grant_app_role),
    ]
