"""Row-level security for the rest of the account data, and the narrow lookups that run
before a context exists (API-key sign-in) or across it (joining an organization)."""

from django.db import migrations

from config.db.operations import CreatePolicy, EnableRowLevelSecurity

# Frozen SQL fragments (as config.db.operations wrote them when this migration was made).
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def in_organization(column: str = "organization_id") -> str:
    return f"{column} = ANY (app_organization_ids())"


def owned_by_user(column: str = "user_id") -> str:
    return f"{column} = {CURRENT_USER}"


def user_owned_table(table: str, column: str = "user_id") -> list:
    return [EnableRowLevelSecurity(table), CreatePolicy(table, f"{table}_owner", using=owned_by_user(column))]


FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION accounts_current_user_email() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT email FROM accounts_user WHERE id = {CURRENT_USER} $$;

-- Which user holds this API key (prefix and sha256 of the whole key); nothing more.
CREATE OR REPLACE FUNCTION accounts_api_key_user(p_prefix text, p_key_hash text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT user_id FROM accounts_apikey WHERE prefix = p_prefix AND key_hash = p_key_hash $$;
REVOKE ALL ON FUNCTION accounts_api_key_user(text, text) FROM PUBLIC;

-- May the context's user join this organization with this role: a pending invitation
-- to their email, or (as a member) the organization's auto-join email domain.
CREATE OR REPLACE FUNCTION accounts_may_join(p_organization uuid, p_role text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    WITH me AS (SELECT email FROM accounts_user WHERE id = {CURRENT_USER})
    SELECT EXISTS (
        SELECT 1 FROM accounts_invitation i, me
        WHERE i.organization_id = p_organization AND i.email = me.email AND i.role = p_role
          AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()
    ) OR (p_role = 'member' AND EXISTS (
        SELECT 1 FROM accounts_organization o, me
        WHERE o.id = p_organization AND o.auto_join_domain <> ''
          AND o.auto_join_domain = split_part(me.email, '@', 2)
    ))
    $$;
REVOKE ALL ON FUNCTION accounts_may_join(uuid, text) FROM PUBLIC;

-- The organizations whose auto-join domain is the context user's email domain.
CREATE OR REPLACE FUNCTION accounts_auto_join_organizations() RETURNS uuid[]
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT COALESCE(array_agg(o.id), '{{}}') FROM accounts_organization o
    JOIN accounts_user u ON u.id = {CURRENT_USER}
    WHERE o.auto_join_domain <> '' AND o.auto_join_domain = split_part(u.email, '@', 2)
    $$;
REVOKE ALL ON FUNCTION accounts_auto_join_organizations() FROM PUBLIC;
"""
DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS accounts_auto_join_organizations();
DROP FUNCTION IF EXISTS accounts_may_join(uuid, text);
DROP FUNCTION IF EXISTS accounts_api_key_user(text, text);
DROP FUNCTION IF EXISTS accounts_current_user_email();
"""
INVITEE = "email = accounts_current_user_email()"


def grant_functions(apps, schema_editor):
    from django.conf import settings

    for alias in ("default", "privileged"):
        role = schema_editor.quote_name(settings.DATABASES[alias]["USER"])
        for signature in ("accounts_api_key_user(text, text)", "accounts_may_join(uuid, text)", "accounts_auto_join_organizations()"):
            schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_preferences_invitations_sessions_keys_credentials")]

    operations = [
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
        migrations.RunPython(grant_functions, migrations.RunPython.noop),
        *user_owned_table("accounts_preferences"),
        *user_owned_table("accounts_usersession"),
        *user_owned_table("accounts_apikey"),
        *user_owned_table("accounts_providercredential"),
        *user_owned_table("accounts_integration"),
        # Invitations: the organization's members manage them; the invitee sees and accepts theirs.
        EnableRowLevelSecurity("accounts_invitation"),
        CreatePolicy("accounts_invitation", "accounts_invitation_organization", using=in_organization()),
        CreatePolicy("accounts_invitation", "accounts_invitation_invitee_read", using=INVITEE, command="SELECT"),
        CreatePolicy("accounts_invitation", "accounts_invitation_invitee_accept", using=INVITEE, command="UPDATE"),
        # Joining: only through an invitation or the auto-join domain.
        CreatePolicy(
            "accounts_membership",
            "accounts_membership_join",
            command="INSERT",
            check=f"user_id = {CURRENT_USER} AND accounts_may_join(organization_id, role)",
        ),
    ]
