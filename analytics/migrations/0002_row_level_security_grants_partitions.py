"""Row-level security and grants for analytics, the audit log's immutability, and the
first monthly partitions.

The app role reads its own (and its organizations') usage, inserts its own ledger rows,
and may never update or delete the ledger; rollups, watermarks and the three logs are
written by the worker role only (Celery), so the app role gets SELECT on them at most.
"""

from django.conf import settings
from django.db import migrations

from config.db.operations import CreatePolicy, EnableRowLevelSecurity, in_organization, owned_by_user
from config.db.partitions import partition_ensure, partitions_list

OWN_OR_ORGANIZATION = f"{owned_by_user()} OR {in_organization()}"
LOGS = ("analytics_apilog", "analytics_event", "analytics_auditlog")

IMMUTABLE_AUDIT = """
CREATE OR REPLACE FUNCTION analytics_auditlog_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only GDPR erasure may rewrite entries (anonymize), and it says so explicitly.
    IF current_setting('confab.audit_erasure', true) = 'on' AND TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is immutable: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER analytics_auditlog_immutable BEFORE UPDATE OR DELETE ON analytics_auditlog
    FOR EACH ROW EXECUTE FUNCTION analytics_auditlog_immutable();
"""
DROP_IMMUTABLE_AUDIT = """
DROP TRIGGER IF EXISTS analytics_auditlog_immutable ON analytics_auditlog;
DROP FUNCTION IF EXISTS analytics_auditlog_immutable();
"""


def _role(schema_editor, alias):
    return schema_editor.quote_name(settings.DATABASES[alias]["USER"])


def grants(apps, schema_editor):
    app = _role(schema_editor, "default")
    for table in ("analytics_tokenusage",):
        schema_editor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {app}")
    for table in ("analytics_usagerollup", *LOGS):
        schema_editor.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {table} FROM {app}")
    schema_editor.execute(f"REVOKE ALL ON analytics_rollupwatermark FROM {app}")
    schema_editor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON analytics_usagerequest FROM {app}")
    # The worker role may anonymize, never delete, audit entries (the trigger checks too).
    schema_editor.execute(f"REVOKE DELETE, TRUNCATE ON analytics_auditlog FROM {_role(schema_editor, 'privileged')}")


def partitions_create(apps, schema_editor):
    for table in settings.PARTITIONED_TABLES:
        # The default partition came with the table (and the owner's default grants): revoke them.
        for partition in partitions_list(table):
            for alias in ("default", "privileged"):
                schema_editor.execute(f"REVOKE ALL ON {partition.name} FROM {_role(schema_editor, alias)}")
        partition_ensure(table)


class Migration(migrations.Migration):
    dependencies = [("analytics", "0001_ledger_rollups_logs")]

    operations = [
        EnableRowLevelSecurity("analytics_tokenusage"),
        CreatePolicy("analytics_tokenusage", "analytics_tokenusage_read", using=OWN_OR_ORGANIZATION, command="SELECT"),
        CreatePolicy(
            "analytics_tokenusage", "analytics_tokenusage_record", check=f"{owned_by_user()} AND {in_organization()}", command="INSERT"
        ),
        EnableRowLevelSecurity("analytics_usagerollup"),
        CreatePolicy("analytics_usagerollup", "analytics_usagerollup_read", using=OWN_OR_ORGANIZATION, command="SELECT"),
        *[
            op
            for table in LOGS
            for op in (EnableRowLevelSecurity(table), CreatePolicy(table, f"{table}_own", using=owned_by_user(), command="SELECT"))
        ],
        migrations.RunSQL(IMMUTABLE_AUDIT, DROP_IMMUTABLE_AUDIT),
        migrations.RunPython(grants, migrations.RunPython.noop),
        migrations.RunPython(partitions_create, migrations.RunPython.noop),
    ]
