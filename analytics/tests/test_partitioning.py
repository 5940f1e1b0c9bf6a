"""The analytics tables are partitioned by month and queries prune to the months they ask for."""

from datetime import date

import pytest
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
