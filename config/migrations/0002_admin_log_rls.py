"""Admin's log holds who changed what: each staff member's own rows under the app role
(admin itself works in the privileged context)."""

from django.db import migrations

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

# Frozen SQL fragments (as config.db.operations wrote them when this migration was made).
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def owned_by_user(column: str = "user_id") -> str:
    return f"{column} = {CURRENT_USER}"


def user_owned_table(table: str, column: str = "user_id") -> list:
    return [EnableRowLevelSecurity(table), CreatePolicy(table, f"{table}_owner", using=owned_by_user(column))]


class Migration(migrations.Migration):
    dependencies = [("config", "0001_roles_grants_and_rls_functions"), ("admin", "0003_logentry_add_action_flag_choices")]
    operations = user_owned_table("django_admin_log")
