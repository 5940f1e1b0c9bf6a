"""Roles inside an organization, held by the database: who may write organizations,
memberships and invitations, and an organization that never loses its last owner.

Reads stay as they were (members see their organizations' rows). Every write policy asks
accounts_organization_role(), which reads the caller's membership row itself: the
organization list in the context decides what is visible, never what may be written.
Owners may do everything; admins manage members and invitations but not owners; a member
may only remove their own membership (leave). Only the role of a membership, and the
accepted/withdrawn marks of an invitation, may change after they are made (column grants).
"""

from django.db import migrations

from config.db.operations import CreatePolicy

# Frozen SQL fragments (as config.db.operations wrote them when this migration was made).
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def owned_by_user(column: str = "user_id") -> str:
    return f"{column} = {CURRENT_USER}"


def in_organization(column: str = "organization_id") -> str:
    return f"{column} = ANY (app_organization_ids())"


FUNCTIONS = f"""
-- The context user's role in an organization, from their membership row (NULL if none).
CREATE OR REPLACE FUNCTION accounts_organization_role(p_organization uuid) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$ SELECT role FROM accounts_membership WHERE organization_id = p_organization AND user_id = {CURRENT_USER} $$;
REVOKE ALL ON FUNCTION accounts_organization_role(uuid) FROM PUBLIC;

-- May the context user become this organization's first owner: they created it and nobody is in it yet.
CREATE OR REPLACE FUNCTION accounts_may_found(p_organization uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
    SELECT EXISTS (SELECT 1 FROM accounts_organization WHERE id = p_organization AND created_by_id = {CURRENT_USER})
       AND NOT EXISTS (SELECT 1 FROM accounts_membership WHERE organization_id = p_organization)
    $$;
REVOKE ALL ON FUNCTION accounts_may_found(uuid) FROM PUBLIC;

-- At commit: an organization that still exists keeps at least one owner.
CREATE OR REPLACE FUNCTION accounts_organization_keeps_an_owner() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    IF OLD.role <> 'owner' THEN
        RETURN NULL;
    END IF;
    -- One check per organization at a time (read committed): a concurrent step-down waits, then counts this one.
    PERFORM 1 FROM accounts_organization WHERE id = OLD.organization_id FOR NO KEY UPDATE;
    IF FOUND AND NOT EXISTS (SELECT 1 FROM accounts_membership WHERE organization_id = OLD.organization_id AND role = 'owner') THEN
        RAISE EXCEPTION 'organization % would have no owner', OLD.organization_id
            USING ERRCODE = 'check_violation', HINT = 'Make someone else owner first.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION accounts_organization_keeps_an_owner() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER accounts_membership_keeps_an_owner AFTER UPDATE OR DELETE ON accounts_membership
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION accounts_organization_keeps_an_owner();
"""
DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS accounts_membership_keeps_an_owner ON accounts_membership;
DROP FUNCTION IF EXISTS accounts_organization_keeps_an_owner();
DROP FUNCTION IF EXISTS accounts_may_found(uuid);
DROP FUNCTION IF EXISTS accounts_organization_role(uuid);
"""

IN_ORGANIZATION = in_organization()
ADMIN_OF_ORGANIZATION = "accounts_organization_role(id) IN ('owner', 'admin')"
ADMIN = "accounts_organization_role(organization_id) IN ('owner', 'admin')"
# Owners manage any role; admins every role but owner (the row's role, before and after).
MANAGES_ROLE = "CASE accounts_organization_role(organization_id) WHEN 'owner' THEN true WHEN 'admin' THEN role <> 'owner' ELSE false END"
FOUNDER = f"user_id = {CURRENT_USER} AND role = 'owner' AND accounts_may_found(organization_id)"
INVITEE = "email = accounts_current_user_email()"
PENDING = "accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()"

# The policies 0002/0004 made for ALL commands (any member could write), recreated on reversal.
OLD_POLICIES = {
    ("accounts_organization", "accounts_organization_member"): "FOR ALL USING (id = ANY (app_organization_ids()))",
    ("accounts_membership", "accounts_membership_member"): (
        f"FOR ALL USING ({owned_by_user()} OR {IN_ORGANIZATION}) WITH CHECK ({IN_ORGANIZATION})"
    ),
    ("accounts_invitation", "accounts_invitation_organization"): f"FOR ALL USING ({IN_ORGANIZATION})",
    ("accounts_invitation", "accounts_invitation_invitee_accept"): f"FOR UPDATE USING ({INVITEE}) WITH CHECK ({INVITEE})",
}


def _drop_old(table: str, name: str) -> migrations.RunSQL:
    return migrations.RunSQL(f"DROP POLICY {name} ON {table}", f"CREATE POLICY {name} ON {table} {OLD_POLICIES[table, name]}")


GRANTED_COLUMNS = {"accounts_membership": "role", "accounts_invitation": "accepted_at, revoked_at"}


def _role(schema_editor, alias: str) -> str:
    from django.conf import settings

    return schema_editor.quote_name(settings.DATABASES[alias]["USER"])


def grant(apps, schema_editor):
    for alias in ("default", "privileged"):
        for signature in ("accounts_organization_role(uuid)", "accounts_may_found(uuid)"):
            schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {_role(schema_editor, alias)}")
    for table, columns in GRANTED_COLUMNS.items():
        schema_editor.execute(f"REVOKE UPDATE ON {table} FROM {_role(schema_editor, 'default')}")
        schema_editor.execute(f"GRANT UPDATE ({columns}) ON {table} TO {_role(schema_editor, 'default')}")


def ungrant(apps, schema_editor):
    for table, columns in GRANTED_COLUMNS.items():
        schema_editor.execute(f"REVOKE UPDATE ({columns}) ON {table} FROM {_role(schema_editor, 'default')}")
        schema_editor.execute(f"GRANT UPDATE ON {table} TO {_role(schema_editor, 'default')}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_invitation_organization_name")]

    operations = [
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
        migrations.RunPython(grant, ungrant),
        # Organizations: members read; owners and admins change; owners delete.
        _drop_old("accounts_organization", "accounts_organization_member"),
        CreatePolicy("accounts_organization", "accounts_organization_read", using="id = ANY (app_organization_ids())", command="SELECT"),
        CreatePolicy("accounts_organization", "accounts_organization_admin_update", using=ADMIN_OF_ORGANIZATION, command="UPDATE"),
        CreatePolicy(
            "accounts_organization",
            "accounts_organization_owner_delete",
            using="accounts_organization_role(id) = 'owner'",
            command="DELETE",
        ),
        # Memberships: read as before; joining (0004's policy) or founding adds yourself; owners
        # and admins manage others within their rights; anyone may leave.
        _drop_old("accounts_membership", "accounts_membership_member"),
        CreatePolicy("accounts_membership", "accounts_membership_read", using=f"{owned_by_user()} OR {IN_ORGANIZATION}", command="SELECT"),
        CreatePolicy("accounts_membership", "accounts_membership_found", check=FOUNDER, command="INSERT"),
        CreatePolicy("accounts_membership", "accounts_membership_manage_insert", check=MANAGES_ROLE, command="INSERT"),
        CreatePolicy("accounts_membership", "accounts_membership_manage_update", using=MANAGES_ROLE, command="UPDATE"),
        CreatePolicy("accounts_membership", "accounts_membership_remove", using=f"{owned_by_user()} OR {MANAGES_ROLE}", command="DELETE"),
        # Invitations: members read (as before); owners and admins invite (owners only as owner)
        # and withdraw; the invitee may only mark their pending invitation accepted.
        _drop_old("accounts_invitation", "accounts_invitation_organization"),
        _drop_old("accounts_invitation", "accounts_invitation_invitee_accept"),
        CreatePolicy("accounts_invitation", "accounts_invitation_read", using=IN_ORGANIZATION, command="SELECT"),
        CreatePolicy("accounts_invitation", "accounts_invitation_manage_insert", check=MANAGES_ROLE, command="INSERT"),
        CreatePolicy("accounts_invitation", "accounts_invitation_admin_update", using=ADMIN, command="UPDATE"),
        CreatePolicy("accounts_invitation", "accounts_invitation_admin_delete", using=ADMIN, command="DELETE"),
        CreatePolicy(
            "accounts_invitation",
            "accounts_invitation_invitee_accept",
            using=f"{INVITEE} AND {PENDING}",
            check=f"{INVITEE} AND accepted_at IS NOT NULL AND revoked_at IS NULL",
            command="UPDATE",
        ),
    ]
