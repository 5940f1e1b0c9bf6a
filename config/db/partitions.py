"""Monthly range partitions: create ahead, move strays out of the default, drop past retention.

Tables register in settings.PARTITIONED_TABLES as {table: {"retention_months": N}}.
Partitions are named `<table>_pYYYYMM`; `<table>_default` catches rows outside every
month. Policies and grants live on the parent only: each new partition has every
privilege of the app and worker roles revoked (the owner's default privileges would
otherwise grant them, and a grant on a partition bypasses the parent's policies).
All DDL runs as the owner role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from config.db.routers import OWNER_ALIAS

_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: date | None  # None for the default partition
    end: date | None
    rows: int | None = None

    @property
    def is_default(self) -> bool:
        return self.start is None


def month_start(day: date) -> date:
    return date(day.year, day.month, 1)


def month_add(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, start: date) -> str:
    return f"{table}_p{start:%Y%m}"


def _today() -> date:
    return timezone.now().date()


def _q(name: str) -> str:
    return connections[OWNER_ALIAS].ops.quote_name(name)


def _app_roles() -> list[str]:
    return [settings.DATABASES[alias]["USER"] for alias in ("default", "privileged")]


def partitioned_tables() -> dict[str, dict]:
    return dict(getattr(settings, "PARTITIONED_TABLES", {}))


def partitions_list(table: str, *, count_rows: bool = False) -> list[Partition]:
    with connections[OWNER_ALIAS].cursor() as cur:
        cur.execute(
            """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = %s::regclass ORDER BY c.relname""",
            [table],
        )
        partitions = []
        for name, bound in cur.fetchall():
            match = _BOUND.search(bound or "")
            start = end = None
            if match:
                start = datetime.fromisoformat(match.group(1)).date()
                end = datetime.fromisoformat(match.group(2)).date()
            rows = None
            if count_rows:
                cur.execute(f"SELECT count(*) FROM {_q(name)}")
                rows = cur.fetchone()[0]
            partitions.append(Partition(name, start, end, rows))
    return partitions


def _revoke_roles(cur, name: str) -> None:
    for role in _app_roles():
        cur.execute(f"REVOKE ALL ON {_q(name)} FROM {_q(role)}")


def _partition_create(cur, table: str, start: date) -> str:
    """Create one month's partition, moving any of its rows out of the default partition first."""
    name = partition_name(table, start)
    end = month_add(start, 1)
    default = f"{table}_default"
    bounds = [f"{start.isoformat()} 00:00:00+00", f"{end.isoformat()} 00:00:00+00"]
    # Writers wait from here to the commit, then route to the new partition: a row of the month reaching
    # the default before the attach would fail it, and one routed there with only the default locked
    # fails its own check after it. ACCESS EXCLUSIVE (PARTITION OF's own lock): none to upgrade, no deadlock.
    cur.execute(f"LOCK TABLE {_q(table)} IN ACCESS EXCLUSIVE MODE")
    cur.execute(f"SELECT 1 FROM {_q(default)} WHERE created_at >= %s AND created_at < %s LIMIT 1", bounds)
    if cur.fetchone() is None:
        cur.execute(f"CREATE TABLE {_q(name)} PARTITION OF {_q(table)} FOR VALUES FROM ('{bounds[0]}') TO ('{bounds[1]}')")
    else:
        # Attaching would fail while the default holds rows of this month: move them across first.
        cur.execute(f"CREATE TABLE {_q(name)} (LIKE {_q(table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        # A move, not a deletion: the audit log's immutability trigger lets it through (analytics 0010).
        cur.execute("SELECT set_config('confab.partition_move', 'on', true)")
        cur.execute(
            f"WITH moved AS (DELETE FROM {_q(default)} WHERE created_at >= %s AND created_at < %s RETURNING *) "
            f"INSERT INTO {_q(name)} SELECT * FROM moved",
            bounds,
        )
        cur.execute("SELECT set_config('confab.partition_move', 'off', true)")
        cur.execute(f"ALTER TABLE {_q(table)} ATTACH PARTITION {_q(name)} FOR VALUES FROM ('{bounds[0]}') TO ('{bounds[1]}')")
    _revoke_roles(cur, name)
    return name


def partition_ensure(table: str, *, months_ahead: int | None = None, today: date | None = None) -> list[str]:
    """Partitions from the current month to `months_ahead` months on, plus a month for every
    row sitting in the default partition; returns the partitions created."""
    months_ahead = settings.PARTITION_MONTHS_AHEAD if months_ahead is None else months_ahead
    current = month_start(today or _today())
    created = []
    with transaction.atomic(using=OWNER_ALIAS), connections[OWNER_ALIAS].cursor() as cur:
        # One ensure at a time per table, and the partitions read under the lock: a run that
        # waited must see what the run before it created.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"partitions:{table}"])
        existing = {p.start for p in partitions_list(table) if not p.is_default}
        cur.execute(f"SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM {_q(table + '_default')}")
        stray_months = {row[0] for row in cur.fetchall()}
        wanted = {month_add(current, n) for n in range(months_ahead + 1)} | stray_months
        for start in sorted(wanted - existing):
            created.append(_partition_create(cur, table, start))
    return created


def partition_prune(table: str, *, retention_months: int | None = None, today: date | None = None) -> list[str]:
    """Detach and drop the partitions wholly older than the retention; returns those dropped."""
    if retention_months is None:
        retention_months = partitioned_tables()[table]["retention_months"]
    cutoff = month_add(month_start(today or _today()), -retention_months)
    dropped = []
    with transaction.atomic(using=OWNER_ALIAS), connections[OWNER_ALIAS].cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"partitions:{table}"])
        for partition in partitions_list(table):
            if partition.is_default or partition.end > cutoff:
                continue
            cur.execute(f"ALTER TABLE {_q(table)} DETACH PARTITION {_q(partition.name)}")
            cur.execute(f"DROP TABLE {_q(partition.name)}")
            dropped.append(partition.name)
    return dropped


def partitions_upkeep(*, today: date | None = None) -> dict[str, dict[str, list[str]]]:
    """Ensure and prune every registered table (the daily task)."""
    report = {}
    for table, options in partitioned_tables().items():
        report[table] = {
            "created": partition_ensure(table, today=today),
            "dropped": partition_prune(table, retention_months=options["retention_months"], today=today),
        }
    return report


def partitioned_table_sql(table: str, columns: str, *, indexes: list[str] = ()) -> tuple[str, str]:
    """Forward and reverse SQL for a monthly-partitioned table with a default partition.

    A migration never calls this (it may change later): paste its output into the migration.

    `columns` is the column list (without `id` and `created_at`, which are added:
    a bigint from the table's own sequence and the partition key; the primary key is both).
    """
    seq = f"{table}_id_seq"
    forward = [
        f"CREATE SEQUENCE {seq}",
        f"""CREATE TABLE {table} (
            id bigint NOT NULL DEFAULT nextval('{seq}'),
            created_at timestamptz NOT NULL DEFAULT now(),
            {columns},
            PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)""",
        f"ALTER SEQUENCE {seq} OWNED BY {table}.id",
        f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT",
        *indexes,
    ]
    reverse = [f"DROP TABLE IF EXISTS {table} CASCADE"]
    return ";\n".join(forward) + ";", ";\n".join(reverse) + ";"
