"""Monthly partitions: created ahead, strays moved out of the default, dropped past retention."""

import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction

from analytics import services
from analytics.tests.factories import make_member, usage_fields
from config.db import partitions, rls
from config.tests.races import on_a_thread, until

pytestmark = pytest.mark.django_db(transaction=True)
TABLE = "test_parted_log"


@pytest.fixture
def parted_table(settings):
    forward, reverse = partitions.partitioned_table_sql(TABLE, "user_id uuid NULL, note text NOT NULL DEFAULT ''")
    with connections["owner"].cursor() as cur:
        cur.execute(forward)
        for role in ("confab_app", "confab_worker"):
            cur.execute(f"REVOKE ALL ON {TABLE}_default FROM {role}")
    settings.PARTITIONED_TABLES = {**settings.PARTITIONED_TABLES, TABLE: {"retention_months": 3}}
    yield TABLE
    with connections["owner"].cursor() as cur:
        cur.execute(reverse)


def _months(table=TABLE):
    return [(p.start, p.end) for p in partitions.partitions_list(table) if not p.is_default]


def _insert(created_at):
    with connections["owner"].cursor() as cur:
        cur.execute(f"INSERT INTO {TABLE} (created_at, note) VALUES (%s, 'x')", [created_at])


def test_month_arithmetic_crosses_year_boundaries():
    assert partitions.month_add(date(2026, 11, 1), 2) == date(2027, 1, 1)
    assert partitions.month_add(date(2027, 1, 1), -1) == date(2026, 12, 1)
    assert partitions.month_add(date(2026, 12, 1), -24) == date(2024, 12, 1)


def test_ensure_creates_months_ahead_across_the_year_boundary(parted_table):
    created = partitions.partition_ensure(TABLE, months_ahead=3, today=date(2026, 11, 20))
    assert created == [f"{TABLE}_p202611", f"{TABLE}_p202612", f"{TABLE}_p202701", f"{TABLE}_p202702"]
    assert _months()[-1] == (date(2027, 2, 1), date(2027, 3, 1))
    assert partitions.partition_ensure(TABLE, months_ahead=3, today=date(2026, 11, 20)) == []  # rerun: nothing new
    # New partitions carry no grants for the app or worker roles (policies live on the parent).
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT has_table_privilege('confab_app', %s, 'SELECT')", [f"{TABLE}_p202701"])
        assert cur.fetchone()[0] is False


def test_rows_in_the_default_partition_move_where_they_belong(parted_table):
    partitions.partition_ensure(TABLE, months_ahead=0, today=date(2026, 12, 5))
    _insert("2027-03-15T10:00:00Z")  # no partition yet: lands in the default
    _insert("2025-06-01T00:00:00Z")
    assert [p.rows for p in partitions.partitions_list(TABLE, count_rows=True) if p.is_default] == [2]
    created = partitions.partition_ensure(TABLE, months_ahead=0, today=date(2026, 12, 5))
    assert created == [f"{TABLE}_p202506", f"{TABLE}_p202703"]
    counts = {p.name: p.rows for p in partitions.partitions_list(TABLE, count_rows=True)}
    assert counts[f"{TABLE}_default"] == 0
    assert counts[f"{TABLE}_p202703"] == counts[f"{TABLE}_p202506"] == 1


def test_prune_drops_only_partitions_past_retention_across_the_year_boundary(parted_table):
    for month in ("2026-09-01", "2026-10-01", "2026-11-01", "2026-12-01"):
        partitions.partition_ensure(TABLE, months_ahead=0, today=date.fromisoformat(month))
    _insert("2026-09-10T00:00:00Z")
    # Today 2027-01-10 with 3 months' retention: keep October onwards, drop September.
    dropped = partitions.partition_prune(TABLE, retention_months=3, today=date(2027, 1, 10))
    assert dropped == [f"{TABLE}_p202609"]
    assert _months()[0] == (date(2026, 10, 1), date(2026, 11, 1))
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {TABLE}")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT to_regclass(%s)", [f"{TABLE}_p202609"])
        assert cur.fetchone()[0] is None  # detached and dropped, not left behind
    assert partitions.partition_prune(TABLE, retention_months=3, today=date(2027, 1, 10)) == []


def test_partitions_command_lists_ensures_and_prunes(parted_table, capsys):
    call_command("partitions", "ensure", "--table", TABLE, "--months-ahead", "1", "--today", "2026-12-31")
    call_command("partitions", "list", "--table", TABLE)
    out = capsys.readouterr().out
    assert f"{TABLE}_p202701" in out and "2026-12-01 .. 2027-01-01" in out and "DEFAULT" in out
    call_command("partitions", "prune", "--table", TABLE, "--today", "2027-05-01")
    assert f"dropped {TABLE}_p202612" in capsys.readouterr().out


def test_two_concurrent_ensures_create_each_partition_once(parted_table):
    # Both runs start while another session holds the table's partition lock, so both are
    # past any read made before the lock when it is released.
    results, errors = [], []

    def ensure():
        try:
            results.append(partitions.partition_ensure(TABLE, months_ahead=2, today=date(2026, 11, 20)))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ensure) for _ in range(2)]
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"partitions:{TABLE}"])
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while True:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            if cur.fetchone()[0] == 2:
                break
            assert time.monotonic() < deadline, "the two runs never both waited for the lock"
            time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(results, key=len) == [[], [f"{TABLE}_p202611", f"{TABLE}_p202612", f"{TABLE}_p202701"]]
    assert _months() == [
        (date(2026, 11, 1), date(2026, 12, 1)),
        (date(2026, 12, 1), date(2027, 1, 1)),
        (date(2027, 1, 1), date(2027, 2, 1)),
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["ensure", "--table", "no_such_table"], "not a partitioned table"),
        (["ensure", "--today", "31/12/2026"], "--today must be a date"),
        (["ensure", "--months-ahead", "-1"], "from 0 to 120"),
    ],
)
def test_partitions_command_refuses_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("partitions", *args)


# --- A month's partition made while the ledger is being written -----------------------------

LEDGER = ("analytics_tokenusage", "analytics_tokenusage_default")


def _free_month() -> date:
    """A month far ahead with no ledger partition yet (partitions made by earlier runs persist)."""
    existing = {p.start for p in partitions.partitions_list("analytics_tokenusage") if not p.is_default}
    month = date(2040, 1, 1)
    while month in existing:
        month = partitions.month_add(month, 1)
    return month


def _waiting_on(*relations: str) -> int:
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = ANY (%s::regclass[])", [list(relations)])
        return cur.fetchone()[0]


def _metered(user, org, moment, written=None, release=None):
    """A call of `moment` metered by `user`; with the events, held uncommitted until released."""
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        services.usage_record(**usage_fields(user, org, created_at=moment))
        if written is not None:
            written.set()
            assert release.wait(30)


def _upkeep_racing_calls(*, late_call_while_waiting: bool) -> tuple[list, list, str]:
    """A month's call already in the default partition, a second one uncommitted when the upkeep
    starts (and, if asked, a third metered while the upkeep waits); returns (errors, created, name)."""
    user, org = make_member()
    month = _free_month()
    moment = datetime(month.year, month.month, 15, 12, tzinfo=UTC)
    _metered(user, org, moment)  # already in the default
    written, release = threading.Event(), threading.Event()
    errors, created = [], []
    writer = on_a_thread(lambda: _metered(user, org, moment + timedelta(hours=1), written, release), errors)
    assert written.wait(30)
    keeper = on_a_thread(lambda: created.extend(partitions.partition_ensure("analytics_tokenusage", months_ahead=0)), errors)
    until(lambda: _waiting_on(*LEDGER) >= 1, "the upkeep waits for the writer's locks on the ledger")
    threads = [writer, keeper]
    if late_call_while_waiting:
        threads.append(on_a_thread(lambda: _metered(user, org, moment + timedelta(hours=2)), errors))
        until(lambda: _waiting_on(*LEDGER) >= 2, "the third call waits behind the upkeep")
    release.set()
    for thread in threads:
        thread.join(30)
    return errors, created, partitions.partition_name("analytics_tokenusage", month)


def _rows_in(relation: str) -> int:
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {relation}")
        return cur.fetchone()[0]


def test_partition_upkeep_succeeds_while_a_call_of_that_month_is_being_metered():
    """A month's partition is missing (the beat was down over the month's change, or a partition
    was never made ahead): its calls go to analytics_tokenusage_default. partition_ensure then
    creates the month and moves its rows out of the default before ATTACH. But it does not stop
    writers meanwhile: a call metered at that moment (uncommitted when the move ran, committed
    before ATTACH got its lock) stays in the default partition, and ATTACH fails on it ("updated
    partition constraint for default partition would be violated"). Under steady traffic every daily
    upkeep fails the same way, and the default partition keeps growing with the month's rows.
    Now: partition_ensure raises (IntegrityError, check violation). Should: lock the default
    partition against inserts before the move (LOCK TABLE ... IN SHARE ROW EXCLUSIVE MODE), so the
    late call waits and then goes into the new partition."""
    errors, created, name = _upkeep_racing_calls(late_call_while_waiting=False)
    assert errors == [], f"partition upkeep failed: {errors!r}"
    assert name in created
    assert _rows_in("analytics_tokenusage_default") == 0
    assert _rows_in(name) == 2


def test_a_call_metered_while_the_partition_upkeep_waits_goes_into_the_new_partition():
    """As above, and a third call of that month is metered while the upkeep waits for the second.
    With only the default partition locked, that call routes its row to the default (the month has
    no partition yet), waits for the lock there, and fails its own partition check once the upkeep
    has attached the month ("new row for relation ... violates partition constraint"): every call
    of the month metered during the move fails. The upkeep locks the ledger itself, so such a call
    waits before routing and then goes into the new partition."""
    errors, created, name = _upkeep_racing_calls(late_call_while_waiting=True)
    assert errors == [], f"a call metered during the upkeep failed: {errors!r}"
    assert name in created
    assert _rows_in("analytics_tokenusage_default") == 0
    assert _rows_in(name) == 3
