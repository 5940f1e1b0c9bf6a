"""Grants for the app and worker roles, and the membership function policies read."""

from django.conf import settings
from django.db import migrations
from psycopg import sql

FUNCTIONS = """
CREATE OR REPLACE FUNCTION app_organization_ids() RETURNS uuid[]
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT COALESCE(string_to_array(NULLIF(current_setting('app.organization_ids', true), ''), ',')::uuid[], '{}') $$;
"""
DROP_FUNCTIONS = "DROP FUNCTION IF EXISTS app_organization_ids();"


def _roles():
    return [settings.DATABASES[alias]["USER"] for alias in ("default", "privileged")]


def grant(apps, schema_editor):
    for role in _roles():
        r = sql.Identifier(role).as_string(schema_editor.connection.connection)
        schema_editor.execute(f"GRANT USAGE ON SCHEMA public TO {r}")
        schema_editor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r}")
        schema_editor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {r}")
        # Tables created by later migrations; partitions have theirs revoked when made.
        schema_editor.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}")
        schema_editor.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {r}")


def revoke(apps, schema_editor):
    for role in _roles():
        r = sql.Identifier(role).as_string(schema_editor.connection.connection)
        schema_editor.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {r}")
        schema_editor.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {r}")
        schema_editor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {r}")
        schema_editor.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {r}")


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [migrations.RunPython(grant, revoke), migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS)]
