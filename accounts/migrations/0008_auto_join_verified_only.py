"""Domain auto-join needs proof on both sides, in the database's own join rule too: the
joining user's email is verified, the organization is not a personal workspace, and one
of its owners or admins holds a verified email at the domain. SQL frozen here (CREATE OR
REPLACE keeps the grants made in 0004)."""

from django.db import migrations

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"

# The organization o admits the user row me by its domain.
ADMITS = """o.auto_join_domain <> '' AND NOT o.is_personal AND me.email_verified
          AND o.auto_join_domain = split_part(me.email, '@', 2)
          AND EXISTS (
              SELECT 1 FROM accounts_membership m JOIN accounts_user a ON a.id = m.user_id
              WHERE m.organization_id = o.id AND m.role IN ('owner', 'admin') AND a.email_verified
                AND split_part(a.email, '@', 2) = o.auto_join_domain
          )"""

FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION accounts_may_join(p_organization uuid, p_role text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    WITH me AS (SELECT email, email_verified FROM accounts_user WHERE id = {CURRENT_USER})
    SELECT EXISTS (
        SELECT 1 FROM accounts_invitation i, me
        WHERE i.organization_id = p_organization AND i.email = me.email AND i.role = p_role
          AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()
    ) OR (p_role = 'member' AND EXISTS (
        SELECT 1 FROM accounts_organization o, me
        WHERE o.id = p_organization AND {ADMITS}
    ))
    $$;

-- The organizations that admit the context's (verified) user by domain and that they have not joined yet.
CREATE OR REPLACE FUNCTION accounts_auto_join_organizations() RETURNS uuid[]
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT COALESCE(array_agg(o.id), '{{}}') FROM accounts_organization o
    JOIN accounts_user me ON me.id = {CURRENT_USER}
    WHERE {ADMITS}
      AND NOT EXISTS (SELECT 1 FROM accounts_membership j WHERE j.organization_id = o.id AND j.user_id = me.id)
    $$;
"""

PREVIOUS_FUNCTIONS = f"""
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

CREATE OR REPLACE FUNCTION accounts_auto_join_organizations() RETURNS uuid[]
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT COALESCE(array_agg(o.id), '{{}}') FROM accounts_organization o
    JOIN accounts_user u ON u.id = {CURRENT_USER}
    WHERE o.auto_join_domain <> '' AND o.auto_join_domain = split_part(u.email, '@', 2)
    $$;
"""


class Migration(migrations.Migration):
    dependencies = [("accounts", "0007_session_store_and_grants")]

    operations = [migrations.RunSQL(FUNCTIONS, PREVIOUS_FUNCTIONS)]
