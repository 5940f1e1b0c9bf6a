"""The database's auto-join rule reads an email's domain after its last "@", as mail is routed:
`split_part(email, '@', 2)` took the text after the first, so `"x@acme.test@"@attacker.test`
(a quoted local part, which Django's validator accepts) joined acme.test's organization while
its mail went to attacker.test. Sign-up now refuses quoted addresses too. SQL frozen here (CREATE
OR REPLACE keeps the grants made in 0004); the reverse restores 0008's."""

from django.db import migrations

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def _functions(domain_of) -> str:
    admits = f"""o.auto_join_domain <> '' AND NOT o.is_personal AND me.email_verified
          AND o.auto_join_domain = {domain_of("me.email")}
          AND EXISTS (
              SELECT 1 FROM accounts_membership m JOIN accounts_user a ON a.id = m.user_id
              WHERE m.organization_id = o.id AND m.role IN ('owner', 'admin') AND a.email_verified
                AND {domain_of("a.email")} = o.auto_join_domain
          )"""
    return f"""
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
        WHERE o.id = p_organization AND {admits}
    ))
    $$;

CREATE OR REPLACE FUNCTION accounts_auto_join_organizations() RETURNS uuid[]
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT COALESCE(array_agg(o.id), '{{}}') FROM accounts_organization o
    JOIN accounts_user me ON me.id = {CURRENT_USER}
    WHERE {admits}
      AND NOT EXISTS (SELECT 1 FROM accounts_membership j WHERE j.organization_id = o.id AND j.user_id = me.id)
    $$;
"""


def _after_last_at(column: str) -> str:
    return f"substring({column} from '@([^@]*)$')"


def _after_first_at(column: str) -> str:
    return f"split_part({column}, '@', 2)"


class Migration(migrations.Migration):
    dependencies = [("accounts", "0019_language_tags_and_persona_names_validated")]

    operations = [migrations.RunSQL(_functions(_after_last_at), _functions(_after_first_at))]
