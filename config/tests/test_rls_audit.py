"""rls_audit knows every table, and the app role holds only the grants it uses."""

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from config.management.commands.rls_audit import rls_audit_rows

pytestmark = pytest.mark.django_db  # DDL in the test's transaction: rolled back afterwards


def _owner(sql):
    with connections["owner"].cursor() as cur:
        cur.execute(sql)


def _problems(table):
    return next(row["problems"] for row in rls_audit_rows() if row["relname"] == table)


def test_passes_on_the_real_schema():
    call_command("rls_audit")


def test_fails_when_row_level_security_is_off_on_accounts_user():
    _owner("ALTER TABLE accounts_user NO FORCE ROW LEVEL SECURITY")
    _owner("ALTER TABLE accounts_user DISABLE ROW LEVEL SECURITY")
    assert _problems("accounts_user")
    with pytest.raises(CommandError, match="problem"):
        call_command("rls_audit")


def test_fails_on_a_new_unprotected_table_without_user_columns():
    _owner("CREATE TABLE audit_plain (id bigint PRIMARY KEY, note text)")
    assert any("ALLOWLIST" in p for p in _problems("audit_plain"))
    with pytest.raises(CommandError, match="problem"):
        call_command("rls_audit")


def test_fails_when_an_allowlisted_table_gets_a_grant_beyond_its_reason():
    assert _problems("django_migrations") == []
    _owner("GRANT DELETE ON django_migrations TO confab_app")
    assert _problems("django_migrations")
    with pytest.raises(CommandError, match="problem"):
        call_command("rls_audit")


def test_app_role_reads_schema_history_for_runserver_check():
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections["default"])
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM django_migrations",
        "INSERT INTO auth_permission (name, content_type_id, codename) VALUES ('x', 1, 'x')",
        "DELETE FROM django_content_type",
        "UPDATE auth_group SET name = 'x'",
        "DELETE FROM django_session",
    ],
)
def test_app_role_cannot_write_catalog_tables(raw_app_connection, statement):
    with raw_app_connection.cursor() as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute(statement)
    raw_app_connection.rollback()
