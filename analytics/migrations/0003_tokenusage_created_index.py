"""Time-only index on the ledger: the admin's date hierarchy and newest-first list scan
each partition by created_at alone."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("analytics", "0002_row_level_security_grants_partitions")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX analytics_tokenusage_created ON analytics_tokenusage (created_at)",
            "DROP INDEX IF EXISTS analytics_tokenusage_created",
        )
    ]
