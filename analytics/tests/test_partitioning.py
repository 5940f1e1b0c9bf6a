"""The analytics tables are partitioned by month and queries prune to the months they ask for."""

import os
import re
import subprocess
import sys
import time
import uuid
from datetime import date

import psycopg
import pytest
from django.conf import settings
from django.db import connections

from config.db import partitions

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_analytics_log_is_partitioned_with_partitions_ahead():
    today = date.today()
    for table in ("analytics_tokenusage", "analytics_apilog", "analytics_event", "analytics_auditlog"):
        months = {p.start for p in partitions.partitions_list(table) if not p.is_default}
        assert partitions.month_start(today) in months, table
        assert partitions.month_add(partitions.month_start(today), 2) in months, table


def test_a_one_month_query_touches_one_partition():
    start = partitions.month_start(date.today())
    end = partitions.month_add(start, 1)
    with connections["owner"].cursor() as cur:
        cur.execute(
            "EXPLAIN (FORMAT JSON) SELECT sum(cost) FROM analytics_tokenusage WHERE created_at >= %s AND created_at < %s",
            [f"{start} 00:00:00+00", f"{end} 00:00:00+00"],
        )
        plan = cur.fetchone()[0]
    scanned = set()

    def walk(node):
        if "Relation Name" in node:
            scanned.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert scanned == {partitions.partition_name("analytics_tokenusage", start)}


# The analytics schema as the catalog describes it: tables, columns, constraints, indexes,
# policies and privileges of the parents and the partitions the migrations made.
_SCHEMA_SQL = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || a.attnotnull || ' ' || COALESCE(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relname LIKE 'analytics%%' AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid::regclass::text LIKE 'analytics%%'
UNION ALL
SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid::regclass::text LIKE 'analytics%%'
UNION ALL
SELECT 'policy', tablename || ' ' || policyname || ' ' || cmd || ' ' || COALESCE(qual, '') || ' ' || COALESCE(with_check, '')
FROM pg_policies WHERE tablename LIKE 'analytics%%'
UNION ALL
SELECT 'rls', relname || ' ' || relrowsecurity || ' ' || relforcerowsecurity || ' ' || COALESCE(relacl::text, '')
FROM pg_class WHERE relname LIKE 'analytics%%' AND relkind IN ('r', 'p')
UNION ALL
SELECT 'trigger', tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'analytics%%'
ORDER BY 1, 2
"""


def _schema(**params) -> list:
    with psycopg.connect(**params) as conn:
        # Partitions of months the test run itself may have added are left out.
        return [row for row in conn.execute(_SCHEMA_SQL).fetchall() if not _LATER_PARTITION.search(row[1])]


_TODAY = partitions.month_start(date.today())
_MIGRATED_MONTHS = {f"{partitions.month_add(_TODAY, n):%Y%m}" for n in range(4)}
_LATER_PARTITION = re.compile(r"_p(?!" + "|".join(sorted(_MIGRATED_MONTHS)) + r")\d{6}")


def test_migrate_from_zero_ignores_tables_registered_after_the_migrations(tmp_path):
    """A later app that registers its own partitioned table must not break `migrate` on a new database."""
    owner = connections["owner"].settings_dict
    fresh = f"confab_migrate_{uuid.uuid4().hex[:12]}"
    (tmp_path / "later_app_settings.py").write_text(
        "from config.settings.test import *  # noqa: F403\n"
        "PARTITIONED_TABLES = {**PARTITIONED_TABLES, 'billing_invoice': {'retention_months': 84}}  # noqa: F405\n"
    )

    def url(alias):
        return f"postgres://{connections[alias].settings_dict['USER']}@/{fresh}?host={owner['HOST']}"

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "later_app_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(settings.BASE_DIR)]),
        "DATABASE_URL": url("owner"),
        "DATABASE_APP_URL": url("default"),
        "DATABASE_WORKER_URL": url("privileged"),
        "REDIS_URL": settings.REDIS_URL,
    }
    admin = {"dbname": owner["NAME"], "user": owner["USER"], "host": owner["HOST"], "autocommit": True}
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{fresh}"')
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # The same schema as the test database's, which the same migrations made.
        assert _schema(**{**admin, "dbname": fresh}) == _schema(**admin)
    finally:
        with psycopg.connect(**admin) as conn:
            # The migrate process has exited, but a backend of its pool (the app or worker role,
            # which this owner may not terminate) can outlive it for a moment: wait it out.
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline
                and conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [fresh]).fetchone()[0]
            ):
                time.sleep(0.1)
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
