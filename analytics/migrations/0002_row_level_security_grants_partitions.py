"""Row-level security and grants for analytics, the audit log's immutability, and the
first monthly partitions.

The app role reads its own (and its organizations') usage, inserts its own ledger rows,
and may never update or delete the ledger; rollups, watermarks and the three logs are
written by the worker role only (Celery), so the app role gets SELECT on them at most.
"""

from django.conf import settings
from django.db import migrations

from config.db.operations import CreatePolicy, EnableRowLevelSecurity, in_organization, owned_by_user

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


# The first partitions, frozen here (tables registered later are not this migration's
# business, and later months are the upkeep task's): this month and the 3 after it for the
# four logs, with every grant revoked from partitions (the owner's default privileges gave
# the app and worker roles some; grants and policies live on the parent only).
FIRST_PARTITIONS = """
DO $$
DECLARE
    parent text;
    month date;
    part text;
    grantee text;
BEGIN
    FOREACH parent IN ARRAY ARRAY['analytics_tokenusage', 'analytics_apilog', 'analytics_event', 'analytics_auditlog'] LOOP
        FOR n IN 0..3 LOOP
            month := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => n))::date;
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                parent || '_p' || to_char(month, 'YYYYMM'), parent,
                to_char(month, 'YYYY-MM-DD') || ' 00:00:00+00', to_char(month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00'
            );
        END LOOP;
        FOR part, grantee IN
            SELECT DISTINCT c.relname, a.grantee::regrole::text
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid, aclexplode(c.relacl) a
            WHERE i.inhparent = parent::regclass AND a.grantee <> c.relowner
        LOOP
            EXECUTE format('REVOKE ALL ON %I FROM %s', part, grantee);
        END LOOP;
    END LOOP;
END $$;
"""


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
        # Reversed with their tables (0001); dropping partitions alone would drop their rows.
        migrations.RunSQL(FIRST_PARTITIONS, migrations.RunSQL.noop),
    ]
