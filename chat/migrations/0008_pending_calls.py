"""In-flight unstored calls (issue #10): a gateway call that keeps no conversation leaves one row
from its check to its ledger row, so the stale pass can meter it if its worker dies.

A row is its user's alone (`user_id` against the context), and may be written only for an
organization the user belongs to: the stale pass meters the row to that organization. The web
role inserts and deletes these rows, never updates them.
"""

import uuid

import django.utils.timezone
from django.db import migrations, models

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
OWN_ROWS = f"user_id = {CURRENT_USER}"
# The organizations read once per query, not per row.
OWN_ROWS_IN_OWN_ORGANIZATION = f"user_id = {CURRENT_USER} AND organization_id = ANY ((SELECT app_organization_ids())::uuid[])"


def grants(apps, schema_editor):
    from django.conf import settings

    app = schema_editor.quote_name(settings.DATABASES["default"]["USER"])
    schema_editor.execute(f"REVOKE UPDATE, TRUNCATE ON chat_pendingcall FROM {app}")


def grants_reverse(apps, schema_editor):
    from django.conf import settings

    app = schema_editor.quote_name(settings.DATABASES["default"]["USER"])
    schema_editor.execute(f"GRANT UPDATE ON chat_pendingcall TO {app}")


class Migration(migrations.Migration):
    dependencies = [("chat", "0007_import_export")]

    operations = [
        migrations.CreateModel(
            name="PendingCall",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField()),
                ("organization_id", models.UUIDField()),
                ("request_id", models.CharField(max_length=64, unique=True)),
                ("provider", models.CharField(max_length=32)),
                ("model", models.CharField(max_length=100)),
                ("price_id", models.UUIDField()),
                ("prompt_tokens_estimate", models.PositiveIntegerField()),
                ("key_source", models.CharField(max_length=16)),
                ("reservation", models.JSONField(blank=True, default=dict)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
            ],
            options={"ordering": ["created_at"]},
        ),
        EnableRowLevelSecurity("chat_pendingcall"),
        CreatePolicy("chat_pendingcall", "chat_pendingcall_owner", using=OWN_ROWS, check=OWN_ROWS_IN_OWN_ORGANIZATION),
        migrations.RunPython(grants, grants_reverse),
    ]
