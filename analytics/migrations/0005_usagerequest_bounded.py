"""Request ids are kept for the dedupe window only (services.usage_requests_prune finds them
by age, hence the index), and compared bytewise: every recorded call checks its id against
this table's primary key, and "C" comparisons skip the locale's collation."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("analytics", "0004_tokenusage_own_rows_only")]

    operations = [
        migrations.AlterField(
            model_name="usagerequest",
            name="request_id",
            field=models.CharField(db_collation="C", max_length=64, primary_key=True, serialize=False),
        ),
        migrations.RunSQL(
            "CREATE INDEX analytics_usagerequest_created ON analytics_usagerequest (created_at)",
            "DROP INDEX IF EXISTS analytics_usagerequest_created",
        ),
    ]
