"""Admin's log holds who changed what: each staff member's own rows under the app role
(admin itself works in the privileged context)."""

from django.db import migrations

from config.db.operations import user_owned_table


class Migration(migrations.Migration):
    dependencies = [("config", "0001_roles_grants_and_rls_functions"), ("admin", "0003_logentry_add_action_flag_choices")]
    operations = user_owned_table("django_admin_log")
