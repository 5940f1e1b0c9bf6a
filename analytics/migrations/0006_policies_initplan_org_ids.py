"""Analytics policies call app_organization_ids() once per query (an InitPlan).

Since accounts 0010 the function reads memberships (SECURITY DEFINER, not inlinable): called
per row it would run once for every rollup row a query reads.
"""

from importlib import import_module

from django.db import migrations

# The same frozen ALTER POLICY pair as accounts 0010 (a migration: history, never edited).
accounts_0010 = import_module("accounts.migrations.0010_organization_ids_from_memberships")
CURRENT_USER, PER_ROW = accounts_0010.CURRENT_USER, accounts_0010.PER_ROW

# (table, policy, clause) -> its expression as 0002 made it, with the call per row.
POLICIES = {
    ("analytics_usagerollup", "analytics_usagerollup_read", "USING"): f"user_id = {CURRENT_USER} OR organization_id = {PER_ROW}",
    ("analytics_tokenusage", "analytics_tokenusage_record", "WITH CHECK"): f"user_id = {CURRENT_USER} AND organization_id = {PER_ROW}",
}


class Migration(migrations.Migration):
    dependencies = [("analytics", "0005_usagerequest_bounded"), ("accounts", "0010_organization_ids_from_memberships")]

    operations = [accounts_0010.policy_alter(table, name, clause, expression) for (table, name, clause), expression in POLICIES.items()]
