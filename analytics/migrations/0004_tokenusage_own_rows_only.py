"""The ledger is read row by row only by the user whose calls it records.

Organizations see usage through the rollups (which keep the organization policy). An
OR in the ledger's policy made the planner misjudge every partition (it sorted all of a
user's rows instead of reading the newest from the index: +146% on a list query, see the
RLS benchmark); one equality on user_id lets the (user_id, created_at) index serve it.
"""

from django.db import migrations

from config.db.operations import CURRENT_USER, CreatePolicy, in_organization, owned_by_user


class Migration(migrations.Migration):
    dependencies = [("analytics", "0003_tokenusage_created_index")]

    operations = [
        migrations.RunSQL(
            "DROP POLICY analytics_tokenusage_read ON analytics_tokenusage",
            f"CREATE POLICY analytics_tokenusage_read ON analytics_tokenusage FOR SELECT USING ({owned_by_user()} OR {in_organization()})",
        ),
        # A scalar subquery: the context is read once per query (an InitPlan), not once per partition.
        CreatePolicy("analytics_tokenusage", "analytics_tokenusage_own", using=f"user_id = (SELECT {CURRENT_USER})", command="SELECT"),
    ]
