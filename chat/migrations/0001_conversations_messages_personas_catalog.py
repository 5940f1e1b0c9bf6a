"""Conversations, messages, personas and the model catalog, with their row-level security.

A user reads and writes only their own conversations, messages and personas (`user_id`
against the context; a message carries its owner so its policy is direct). The catalog is
read by everyone and written by staff (the worker or owner role) only.
"""

import uuid
from decimal import Decimal

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

OWN_ROWS = "user_id = NULLIF(current_setting('app.user_id', true), '')::uuid"
USER_TABLES = ("chat_conversation", "chat_message", "chat_persona")


def _role(schema_editor, alias):
    from django.conf import settings

    return schema_editor.quote_name(settings.DATABASES[alias]["USER"])


def grants(apps, schema_editor):
    app = _role(schema_editor, "default")
    # The catalog is staff-written; nobody truncates a user's history from the web.
    schema_editor.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON chat_modelprice FROM {app}")
    for table in USER_TABLES:
        schema_editor.execute(f"REVOKE TRUNCATE ON {table} FROM {app}")


def grants_reverse(apps, schema_editor):
    app = _role(schema_editor, "default")
    for table in ("chat_modelprice", *USER_TABLES):
        schema_editor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {app}")


class Migration(migrations.Migration):
    initial = True

    dependencies = [("config", "0001_roles_grants_and_rls_functions")]

    operations = [
        migrations.CreateModel(
            name="Persona",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField(db_index=True)),
                ("name", models.CharField(max_length=100)),
                ("system_prompt", models.TextField()),
                ("provider", models.CharField(blank=True, max_length=32)),
                ("model", models.CharField(blank=True, max_length=100)),
                ("temperature", models.DecimalField(blank=True, decimal_places=2, max_digits=3, null=True)),
                ("usage_count", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.CreateModel(
            name="ModelPrice",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("provider", models.CharField(max_length=32)),
                ("model", models.CharField(max_length=100)),
                ("display_name", models.CharField(max_length=100)),
                ("context_window", models.PositiveIntegerField(default=0)),
                ("input_price", models.DecimalField(decimal_places=6, max_digits=12)),
                ("output_price", models.DecimalField(decimal_places=6, max_digits=12)),
                ("effective_from", models.DateTimeField(default=django.utils.timezone.now)),
                ("effective_to", models.DateTimeField(blank=True, null=True)),
                ("is_active", models.BooleanField(default=True)),
            ],
            options={
                "ordering": ["provider", "model", "-effective_from"],
                "constraints": [
                    models.UniqueConstraint(fields=("provider", "model", "effective_from"), name="chat_modelprice_one_version_per_start"),
                    models.CheckConstraint(
                        condition=models.Q(("input_price__gte", 0), ("output_price__gte", 0)), name="chat_modelprice_not_negative"
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="Conversation",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField()),
                ("organization_id", models.UUIDField(db_index=True)),
                ("title", models.CharField(blank=True, max_length=200)),
                ("summary", models.TextField(blank=True)),
                ("tags", models.JSONField(blank=True, default=list)),
                ("is_archived", models.BooleanField(default=False)),
                ("message_count", models.PositiveIntegerField(default=0)),
                ("total_tokens", models.BigIntegerField(default=0)),
                ("total_cost", models.DecimalField(decimal_places=6, default=Decimal("0"), max_digits=16)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "persona",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="conversations", to="chat.persona"
                    ),
                ),
            ],
            options={"ordering": ["-updated_at"]},
        ),
        migrations.CreateModel(
            name="Message",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField()),
                ("sequence", models.PositiveIntegerField()),
                ("role", models.CharField(choices=[("user", "User"), ("assistant", "Assistant"), ("system", "System")], max_length=16)),
                ("content", models.TextField(blank=True)),
                ("provider", models.CharField(blank=True, max_length=32)),
                ("model", models.CharField(blank=True, max_length=100)),
                ("input_tokens", models.IntegerField(default=0)),
                ("output_tokens", models.IntegerField(default=0)),
                ("cost", models.DecimalField(decimal_places=6, default=Decimal("0"), max_digits=16)),
                ("latency_ms", models.IntegerField(default=0)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("complete", "Complete"),
                            ("streaming", "Streaming"),
                            ("interrupted", "Interrupted"),
                            ("failed", "Failed"),
                        ],
                        default="complete",
                        max_length=16,
                    ),
                ),
                ("error", models.TextField(blank=True)),
                ("metadata", models.JSONField(blank=True, default=dict)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                (
                    "conversation",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="messages", to="chat.conversation"),
                ),
            ],
            options={
                "ordering": ["conversation", "sequence"],
                "indexes": [models.Index(fields=["status", "created_at"], name="chat_message_status_created")],
                "constraints": [models.UniqueConstraint(fields=("conversation", "sequence"), name="chat_message_sequence_unique")],
            },
        ),
        migrations.AddIndex(
            model_name="conversation", index=models.Index(fields=["user_id", "-updated_at"], name="chat_conv_user_updated")
        ),
        migrations.RunPython(grants, grants_reverse),
        EnableRowLevelSecurity("chat_persona"),
        CreatePolicy("chat_persona", "chat_persona_owner", using=OWN_ROWS),
        EnableRowLevelSecurity("chat_conversation"),
        CreatePolicy("chat_conversation", "chat_conversation_owner", using=OWN_ROWS),
        EnableRowLevelSecurity("chat_message"),
        CreatePolicy("chat_message", "chat_message_owner", using=OWN_ROWS),
        EnableRowLevelSecurity("chat_modelprice"),
        CreatePolicy("chat_modelprice", "chat_modelprice_read", using="true", command="SELECT"),
    ]
