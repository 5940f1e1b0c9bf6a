"""Request ids are recorded by the ledger's own insert, never by the app role directly.

analytics_usagerequest had no row-level security and the app role could INSERT into it and
SELECT from it: SQL run as that role could record the id of its own call in progress, and
usage_record then skipped the call as already recorded (answered, never metered), or read every
tenant's ids. Now a BEFORE INSERT trigger on the ledger records each row's id, as the owner
(SECURITY DEFINER), and skips a row whose id is already recorded; it runs for the ledger write,
which asks for it with the transaction-local confab.ledger_once (other inserts are as before).
A trigger function cannot be called on its own, so an id is recorded only with its ledger row,
written under the caller's row-level security. The app role keeps no grant on the table, and
row-level security is forced with no policy (the worker and owner roles bypass it: the prune).
SQL frozen here, both ways."""

from django.db import migrations

RECORDED_BY_THE_LEDGER = """
CREATE FUNCTION analytics_tokenusage_request_once() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    INSERT INTO analytics_usagerequest (request_id, created_at) VALUES (NEW.request_id, now()) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;  -- recorded already (a retry): the row is not written again
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION analytics_tokenusage_request_once() FROM PUBLIC;
CREATE TRIGGER analytics_tokenusage_request_once BEFORE INSERT ON analytics_tokenusage
    FOR EACH ROW WHEN (current_setting('confab.ledger_once', true) = 'on')
    EXECUTE FUNCTION analytics_tokenusage_request_once();
ALTER TABLE analytics_usagerequest ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_usagerequest FORCE ROW LEVEL SECURITY;
"""
AS_BEFORE = """
ALTER TABLE analytics_usagerequest NO FORCE ROW LEVEL SECURITY;
ALTER TABLE analytics_usagerequest DISABLE ROW LEVEL SECURITY;
DROP TRIGGER IF EXISTS analytics_tokenusage_request_once ON analytics_tokenusage;
DROP FUNCTION IF EXISTS analytics_tokenusage_request_once();
"""


def _app_role(schema_editor) -> str:
    from django.conf import settings  # the role's name is deployment configuration, not app code

    return schema_editor.quote_name(settings.DATABASES["default"]["USER"])


def revoke_app_role(apps, schema_editor):
    schema_editor.execute(f"REVOKE ALL ON analytics_usagerequest FROM {_app_role(schema_editor)}")


def grant_app_role(apps, schema_editor):
    schema_editor.execute(f"GRANT SELECT, INSERT ON analytics_usagerequest TO {_app_role(schema_editor)}")


class Migration(migrations.Migration):
    dependencies = [("analytics", "0010_audit_log_moves_between_partitions")]

    operations = [migrations.RunSQL(RECORDED_BY_THE_LEDGER, AS_BEFORE), migrations.RunPython(revoke_app_role, grant_app_role)]
