"""Import and export (issue #17): an imported conversation keeps its source and id there
(unique per user, so importing twice never duplicates), imported messages are marked, and
export jobs (a user's zip of all conversations) are theirs alone under row-level security.

Depends on 0004: 0005 and 0006 are taken by parallel branches; the merge re-points it.
"""

import uuid

import django.utils.timezone
from django.db import migrations, models

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

OWN_ROWS = "user_id = NULLIF(current_setting('app.user_id', true), '')::uuid"


class Migration(migrations.Migration):
    dependencies = [("chat", "0006_share_links")]

    operations = [
        migrations.AddField(
            model_name="conversation", name="imported_from", field=models.CharField(blank=True, db_default="", default="", max_length=16)
        ),
        migrations.AddField(
            model_name="conversation", name="external_id", field=models.CharField(blank=True, db_default="", default="", max_length=200)
        ),
        migrations.AddConstraint(
            model_name="conversation",
            constraint=models.UniqueConstraint(
                condition=~models.Q(imported_from=""),
                fields=("user_id", "imported_from", "external_id"),
                name="chat_conversation_imported_once",
            ),
        ),
        migrations.AddField(model_name="message", name="imported", field=models.BooleanField(db_default=False, default=False)),
        migrations.CreateModel(
            name="ExportJob",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField(db_index=True)),
                (
                    "status",
                    models.CharField(
                        choices=[("pending", "Pending"), ("ready", "Ready"), ("failed", "Failed"), ("expired", "Expired")],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("conversation_count", models.PositiveIntegerField(default=0)),
                ("size", models.BigIntegerField(default=0)),
                ("error", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("expires_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["-created_at"],
                "indexes": [models.Index(fields=["status", "expires_at"], name="chat_exportjob_status_expires")],
            },
        ),
        EnableRowLevelSecurity("chat_exportjob"),
        CreatePolicy("chat_exportjob", "chat_exportjob_owner", using=OWN_ROWS),
    ]
