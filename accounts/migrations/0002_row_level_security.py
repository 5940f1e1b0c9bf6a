"""Row-level security for users, organizations and memberships, and the sign-in lookup."""

from django.db import migrations

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

# Frozen SQL fragments (as config.db.operations wrote them when this migration was made).
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def owned_by_user(column: str = "user_id") -> str:
    return f"{column} = {CURRENT_USER}"


def in_organization(column: str = "organization_id") -> str:
    return f"{column} = ANY (app_organization_ids())"


# The single path from an email to a user id before any context exists.
LOGIN_LOOKUP = """
CREATE OR REPLACE FUNCTION accounts_user_id_for_login(p_email text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT id FROM accounts_user WHERE email = lower(p_email) AND is_active AND deleted_at IS NULL $$;
REVOKE ALL ON FUNCTION accounts_user_id_for_login(text) FROM PUBLIC;
"""
GRANT_LOOKUP = "GRANT EXECUTE ON FUNCTION accounts_user_id_for_login(text) TO {role}"
DROP_LOOKUP = "DROP FUNCTION IF EXISTS accounts_user_id_for_login(text)"

# Members of an organization see each other's user rows (names, emails), read-only.
SHARES_ORGANIZATION = f"""id IN (SELECT m.user_id FROM accounts_membership m WHERE {in_organization("m.organization_id")})"""


def grant_lookup(apps, schema_editor):
    from django.conf import settings

    for alias in ("default", "privileged"):
        schema_editor.execute(GRANT_LOOKUP.format(role=schema_editor.quote_name(settings.DATABASES[alias]["USER"])))


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_users_organizations"), ("config", "0001_roles_grants_and_rls_functions")]

    operations = [
        # Users: each their own row; fellow members' rows read-only.
        EnableRowLevelSecurity("accounts_user"),
        CreatePolicy("accounts_user", "accounts_user_self", using=f"id = {CURRENT_USER}"),
        CreatePolicy("accounts_user", "accounts_user_fellow_members", using=SHARES_ORGANIZATION, command="SELECT"),
        EnableRowLevelSecurity("accounts_user_groups"),
        CreatePolicy("accounts_user_groups", "accounts_user_groups_owner", using=owned_by_user()),
        EnableRowLevelSecurity("accounts_user_user_permissions"),
        CreatePolicy("accounts_user_user_permissions", "accounts_user_user_permissions_owner", using=owned_by_user()),
        # Organizations: visible to their members; created by a user for themself.
        EnableRowLevelSecurity("accounts_organization"),
        CreatePolicy("accounts_organization", "accounts_organization_member", using="id = ANY (app_organization_ids())"),
        CreatePolicy("accounts_organization", "accounts_organization_create", check=f"created_by_id = {CURRENT_USER}", command="INSERT"),
        # Memberships: your own, and everyone's in your organizations (a new organization's
        # creator adds it to the context before adding themself).
        EnableRowLevelSecurity("accounts_membership"),
        CreatePolicy(
            "accounts_membership", "accounts_membership_member", using=f"{owned_by_user()} OR {in_organization()}", check=in_organization()
        ),
        migrations.RunSQL(LOGIN_LOOKUP, DROP_LOOKUP),
        migrations.RunPython(grant_lookup, migrations.RunPython.noop),
    ]
