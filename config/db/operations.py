"""Migration operations for row-level security.

Migrations use these classes as they use Django's own operations: the SQL an operation emits
is part of the history it wrote, so it never changes; a new behaviour is a new class. SQL
fragments (the policies' rules) are copied into each migration, not imported.

Policies read the user as CURRENT_USER below (after a transaction-local setting ends,
the value is '', not NULL), and organization membership through the STABLE function
app_organization_ids() created by config's first migration, so that rule lives in one place.
"""

from django.db import migrations

CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def owned_by_user(column: str = "user_id") -> str:
    return f"{column} = {CURRENT_USER}"


def in_organization(column: str = "organization_id") -> str:
    return f"{column} = ANY (app_organization_ids())"


class EnableRowLevelSecurity(migrations.operations.base.Operation):
    """ENABLE and FORCE row-level security on a table (FORCE binds its owner too)."""

    reversible = True
    reduces_to_sql = True

    def __init__(self, table: str):
        self.table = table

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        t = schema_editor.quote_name(self.table)
        schema_editor.execute(f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY")

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        t = schema_editor.quote_name(self.table)
        schema_editor.execute(f"ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {t} DISABLE ROW LEVEL SECURITY")

    def describe(self):
        return f"Enable and force row-level security on {self.table}"

    @property
    def migration_name_fragment(self):
        return f"rls_{self.table}"

    def deconstruct(self):
        return self.__class__.__qualname__, [self.table], {}


class CreatePolicy(migrations.operations.base.Operation):
    """A named policy: USING decides which rows are visible, WITH CHECK which may be written.

    `command` narrows it to SELECT / INSERT / UPDATE / DELETE (ALL by default); an
    append-only table gets SELECT and INSERT policies and no others.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, table: str, name: str, using: str | None = None, check: str | None = None, command: str = "ALL"):
        self.table, self.name, self.using, self.command = table, name, using, command.upper()
        self.check = check if check is not None else (using if self.command in ("ALL", "UPDATE") else None)
        if self.command == "INSERT" and using:
            raise ValueError("An INSERT policy takes only a WITH CHECK expression.")

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        sql = f"CREATE POLICY {schema_editor.quote_name(self.name)} ON {schema_editor.quote_name(self.table)} FOR {self.command}"
        if self.using:
            sql += f" USING ({self.using})"
        if self.check:
            sql += f" WITH CHECK ({self.check})"
        schema_editor.execute(sql)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        schema_editor.execute(f"DROP POLICY IF EXISTS {schema_editor.quote_name(self.name)} ON {schema_editor.quote_name(self.table)}")

    def describe(self):
        return f"Create policy {self.name} on {self.table}"

    @property
    def migration_name_fragment(self):
        return f"policy_{self.name}"

    def deconstruct(self):
        kwargs = {"using": self.using, "check": self.check, "command": self.command}
        return self.__class__.__qualname__, [self.table, self.name], kwargs


def user_owned_table(table: str, column: str = "user_id") -> list:
    """The common case: a table whose rows belong to one user."""
    rule = owned_by_user(column)
    return [EnableRowLevelSecurity(table), CreatePolicy(table, f"{table}_owner", using=rule)]
