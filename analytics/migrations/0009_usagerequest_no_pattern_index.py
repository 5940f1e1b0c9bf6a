"""The ledger's request ids carry no pattern-matching twin index.

Django gives a varchar primary key a second btree (varchar_pattern_ops) for LIKE 'x%' queries.
Request ids are only ever matched whole (the ledger's once-only check), and the column is in the
C collation, whose plain btree would serve a prefix match anyway; the twin only cost an index
insertion on every metered call. The name is frozen as Django made it."""

from django.db import migrations

INDEX = "analytics_usagerequest_request_id_5fc760b7_like"


class Migration(migrations.Migration):
    dependencies = [("analytics", "0008_reconciliation_reports")]

    operations = [
        migrations.RunSQL(
            f"DROP INDEX IF EXISTS {INDEX};",
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON analytics_usagerequest (request_id varchar_pattern_ops);",
        )
    ]
