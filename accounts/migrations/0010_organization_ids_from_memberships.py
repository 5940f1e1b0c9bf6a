"""The caller's organizations come from their membership rows, not from a list the client sets.

app_organization_ids() (config's first migration) returned the `app.organization_ids`
setting, so a connection that set a foreign organization's id read that organization's
rows. It now reads accounts_membership for `app.user_id` (SECURITY DEFINER: the owner
reads memberships without recursing into their own policy). Not inlinable any more, so
every policy calls it as a scalar subquery: an InitPlan, evaluated once per query instead
of once per row (see the RLS benchmark, config/tests/bench_rls.py).
"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION app_organization_ids() RETURNS uuid[]
    LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT COALESCE(array_agg(organization_id), '{}') FROM accounts_membership
    WHERE user_id = NULLIF(current_setting('app.user_id', true), '')::uuid
    $$;
REVOKE ALL ON FUNCTION app_organization_ids() FROM PUBLIC;
"""
# config 0001's definition, exactly; CREATE OR REPLACE also drops SECURITY DEFINER and search_path.
FUNCTION_BEFORE = """
CREATE OR REPLACE FUNCTION app_organization_ids() RETURNS uuid[]
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT COALESCE(string_to_array(NULLIF(current_setting('app.organization_ids', true), ''), ',')::uuid[], '{}') $$;
GRANT EXECUTE ON FUNCTION app_organization_ids() TO PUBLIC;
"""

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
PER_ROW = "ANY (app_organization_ids())"
# The cast keeps ((SELECT ...)) an array expression; bare, ANY would take it as a subquery of rows.
ONCE = "ANY ((SELECT app_organization_ids())::uuid[])"

# (table, policy, clause) -> its expression as 0002/0006 made it, with the call per row.
POLICIES = {
    ("accounts_user", "accounts_user_fellow_members", "USING"): (
        f"id IN (SELECT m.user_id FROM accounts_membership m WHERE m.organization_id = {PER_ROW})"
    ),
    ("accounts_organization", "accounts_organization_read", "USING"): f"id = {PER_ROW}",
    ("accounts_membership", "accounts_membership_read", "USING"): f"user_id = {CURRENT_USER} OR organization_id = {PER_ROW}",
    ("accounts_invitation", "accounts_invitation_read", "USING"): f"organization_id = {PER_ROW}",
}


def policy_alter(table: str, name: str, clause: str, expression: str) -> migrations.RunSQL:
    """ALTER POLICY to the once-per-query call; the reverse puts the per-row call back."""
    return migrations.RunSQL(
        f"ALTER POLICY {name} ON {table} {clause} ({expression.replace(PER_ROW, ONCE)})",
        f"ALTER POLICY {name} ON {table} {clause} ({expression})",
    )


def _roles(schema_editor) -> list[str]:
    from django.conf import settings

    return [schema_editor.quote_name(settings.DATABASES[alias]["USER"]) for alias in ("default", "privileged")]


def grant(apps, schema_editor):
    for role in _roles(schema_editor):
        schema_editor.execute(f"GRANT EXECUTE ON FUNCTION app_organization_ids() TO {role}")


def ungrant(apps, schema_editor):
    for role in _roles(schema_editor):
        schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION app_organization_ids() FROM {role}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0009_name_validators")]

    operations = [
        migrations.RunSQL(FUNCTION, FUNCTION_BEFORE),
        migrations.RunPython(grant, ungrant),
        *[policy_alter(table, name, clause, expression) for (table, name, clause), expression in POLICIES.items()],
    ]
