"""One export building and one import pending or running per user, as partial unique indexes: the
services' checks are only a courtesy, these hold when two requests race. Rows that would break
them (several pending at once, from before) are failed first, the newest kept. The tables force
row-level security, so the owner lifts FORCE around that UPDATE alone; its SQL is frozen here."""

from django.db import migrations, models

KEEP_NEWEST = """
ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;
UPDATE {table} SET status = 'failed', error = '{error}', finished_at = now()
 WHERE status IN ({active})
   AND id NOT IN (SELECT DISTINCT ON (user_id) id FROM {table} WHERE status IN ({active}) ORDER BY user_id, created_at DESC);
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
"""


class Migration(migrations.Migration):
    dependencies = [("chat", "0010_import_jobs")]

    operations = [
        migrations.RunSQL(
            KEEP_NEWEST.format(table="chat_exportjob", active="'pending'", error="A newer export replaced this one."),
            migrations.RunSQL.noop,
        ),
        migrations.RunSQL(
            KEEP_NEWEST.format(
                table="chat_importjob", active="'pending', 'running'", error="The import did not finish; please upload again."
            ),
            migrations.RunSQL.noop,
        ),
        migrations.AddConstraint(
            model_name="exportjob",
            constraint=models.UniqueConstraint(
                condition=models.Q(status="pending"), fields=("user_id",), name="chat_exportjob_one_pending_per_user"
            ),
        ),
        migrations.AddConstraint(
            model_name="importjob",
            constraint=models.UniqueConstraint(
                condition=models.Q(status__in=["pending", "running"]), fields=("user_id",), name="chat_importjob_one_active_per_user"
            ),
        ),
    ]
