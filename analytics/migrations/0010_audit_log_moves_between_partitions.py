"""The audit log's immutability trigger lets partition upkeep move entries out of the default
partition (config/db/partitions.py): an entry written for a month that had no partition yet
sits in the default one until its month's partition is made, and the move is a DELETE there
and an INSERT in the new one. The trigger refused that DELETE, so the month's partition was
never made and the daily upkeep failed from then on. Only the owner role may DELETE from the
audit log (0002 revokes it from the others), and upkeep says it is moving, for this transaction.
SQL frozen here, both ways."""

from django.db import migrations

ALLOWS_THE_MOVE = """
CREATE OR REPLACE FUNCTION analytics_auditlog_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only GDPR erasure may rewrite entries (anonymize), and it says so explicitly.
    IF current_setting('confab.audit_erasure', true) = 'on' AND TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    -- Partition upkeep moves entries from the default partition to their month's (owner only).
    IF current_setting('confab.partition_move', true) = 'on' AND TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is immutable: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
"""
AS_BEFORE = """
CREATE OR REPLACE FUNCTION analytics_auditlog_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only GDPR erasure may rewrite entries (anonymize), and it says so explicitly.
    IF current_setting('confab.audit_erasure', true) = 'on' AND TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is immutable: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("analytics", "0009_usagerequest_no_pattern_index")]

    operations = [migrations.RunSQL(ALLOWS_THE_MOVE, AS_BEFORE)]
