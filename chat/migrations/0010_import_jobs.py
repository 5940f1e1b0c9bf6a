"""Import jobs: an uploaded export is imported by a Celery task, not in the web request; each job
(status, the file's name and size, the report or the reason it failed) is its owner's alone under
row-level security, the same policy as export jobs (0007), its SQL frozen here."""

import uuid

import django.utils.timezone
from django.db import migrations, models

OWN_ROWS = "user_id = NULLIF(current_setting('app.user_id', true), '')::uuid"


class Migration(migrations.Migration):
    dependencies = [("chat", "0009_messages_only_in_own_conversations")]

    operations = [
        migrations.CreateModel(
            name="ImportJob",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("user_id", models.UUIDField(db_index=True)),
                (
                    "status",
                    models.CharField(
                        choices=[("pending", "Pending"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("file_name", models.CharField(blank=True, max_length=200)),
                ("size", models.BigIntegerField(default=0)),
                ("report", models.JSONField(blank=True, default=dict)),
                ("error", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ["-created_at"],
                "indexes": [models.Index(fields=["status", "created_at"], name="chat_importjob_status_created")],
            },
        ),
        migrations.RunSQL(
            "ALTER TABLE chat_importjob ENABLE ROW LEVEL SECURITY; ALTER TABLE chat_importjob FORCE ROW LEVEL SECURITY",
            "ALTER TABLE chat_importjob NO FORCE ROW LEVEL SECURITY; ALTER TABLE chat_importjob DISABLE ROW LEVEL SECURITY",
        ),
        migrations.RunSQL(
            f"CREATE POLICY chat_importjob_owner ON chat_importjob FOR ALL USING ({OWN_ROWS}) WITH CHECK ({OWN_ROWS})",
            "DROP POLICY IF EXISTS chat_importjob_owner ON chat_importjob",
        ),
    ]
