"""The ledger: exact, append-only, once per request id; rollups and live counters equal it."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from django.conf import settings
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django_redis import get_redis_connection

from analytics import counters, services
from analytics.errors import UsageInvalid
from analytics.models import TokenUsage
from analytics.tests.factories import make_member, usage_fields
from config.db import rls
from config.tests.races import on_a_thread

pytestmark = pytest.mark.django_db(transaction=True)


def _as(user):
    """The app role's context for this user, as a request would have it."""
    rls.context_set(user_id=user.pk)


def _ledger_totals():
    with connections["owner"].cursor() as cur:
        cur.execute("""SELECT (created_at AT TIME ZONE 'UTC')::date, organization_id, user_id, provider, model,
                              sum(input_tokens), sum(output_tokens), sum(total_tokens), count(*), sum(cost)
                       FROM analytics_tokenusage GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""")
        return cur.fetchall()


def _rollup_totals(period="day"):
    with connections["owner"].cursor() as cur:
        cur.execute(
            """SELECT period_start, organization_id, user_id, provider, model,
                              input_tokens, output_tokens, total_tokens, calls, cost
                       FROM analytics_usagerollup WHERE period = %s ORDER BY 1, 2, 3, 4, 5""",
            [period],
        )
        return cur.fetchall()


def _monthly_from_daily(rows):
    totals = {}
    for day, org, user, provider, model, *values in rows:
        key = (day.replace(day=1), org, user, provider, model)
        totals[key] = [a + b for a, b in zip(totals.get(key, [0, 0, 0, 0, Decimal(0)]), values)]
    return sorted((*k, *v) for k, v in totals.items())


def test_usage_record_writes_the_price_and_exact_cost():
    user, org = make_member()
    with transaction.atomic():
        _as(user)
        row = services.usage_record(
            **usage_fields(user, org, input_tokens=1234, output_tokens=567, input_price=Decimal("3"), output_price=Decimal("15"))
        )
    stored = TokenUsage.objects.using("privileged").get(pk=row.pk)
    assert stored.cost == Decimal("0.012207")  # (1234*3 + 567*15) / 1e6 = 0.012207
    assert (stored.input_price, stored.output_price, stored.total_tokens) == (Decimal("3"), Decimal("15"), 1801)


def test_the_same_request_id_is_recorded_once():
    user, org = make_member()
    fields = usage_fields(user, org, request_id="req-retry-1")
    with transaction.atomic():
        _as(user)
        assert services.usage_record(**fields) is not None
    with transaction.atomic():
        _as(user)
        assert services.usage_record(**fields) is None
    assert TokenUsage.objects.using("privileged").filter(request_id="req-retry-1").count() == 1


def test_recorded_alongside_says_whether_the_row_was_written_once():
    user, org = make_member()
    fields = usage_fields(user, org, request_id="req-alongside-1")
    alongside = services.Alongside("alongside AS (SELECT 1 FROM generate_series(1, %(a_n)s))", {"a_n": 3})
    assert services.usage_record_alongside(alongside, alone_as=user.pk, **fields) == (3, True)
    assert services.usage_record_alongside(alongside, alone_as=user.pk, **fields) == (3, False)
    assert TokenUsage.objects.using("privileged").filter(request_id="req-alongside-1").count() == 1


def test_a_request_id_repeated_in_one_batch_is_recorded_once_with_its_first_call():
    user, org = make_member()
    first = usage_fields(user, org, request_id="req-twice", input_tokens=7)
    with transaction.atomic():
        _as(user)
        assert services.usage_record_batch(records=[first, {**first, "input_tokens": 9}, usage_fields(user, org)]) == 2
    assert TokenUsage.objects.using("privileged").get(request_id="req-twice").input_tokens == 7
    assert counters.counters_read(scope="user", owner_id=user.pk).calls == 2


def test_usage_record_takes_keyword_arguments_only():
    user, org = make_member()
    with pytest.raises(TypeError):
        services.usage_record(user.pk, org, "openai", "gpt-test", 1, 1, Decimal("1"), Decimal("1"), "req-positional")


@pytest.mark.parametrize(
    "override,field",
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": -5}, "output_tokens"),
        ({"input_price": Decimal("-0.01")}, "input_price"),
        ({"output_price": "abc"}, "output_price"),
        ({"cost": Decimal("-1")}, "cost"),
        ({"request_id": ""}, "request_id"),
        ({"input_price": Decimal("1000000")}, "input_price"),
        ({"output_tokens": 2**31}, "output_tokens"),
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"conversation_id": "conv-1"}, "conversation_id"),
        ({"created_at": datetime(2026, 11, 1, 12, 0)}, "created_at"),
        ({"success": "yes"}, "success"),
    ],
)
def test_impossible_values_are_refused(override, field):
    user, org = make_member()
    with pytest.raises(UsageInvalid) as error, transaction.atomic():
        _as(user)
        services.usage_record(**usage_fields(user, org, **override))
    assert field in error.value.extra["fields"]
    assert TokenUsage.objects.using("privileged").count() == 0


def test_the_app_role_cannot_record_for_another_user_nor_change_the_ledger(raw_app_connection):
    alice, alice_org = make_member()
    bob, bob_org = make_member()
    with transaction.atomic():
        _as(alice)
        services.usage_record(**usage_fields(alice, alice_org))
    with pytest.raises(Exception, match="row-level security"), transaction.atomic():
        _as(alice)
        services.usage_record(**usage_fields(bob, bob_org))
    with raw_app_connection.cursor() as cur:
        cur.execute(
            "SELECT set_config('app.user_id', %s, true), set_config('app.organization_ids', %s, true)", [str(alice.pk), str(alice_org)]
        )
        for statement in ("UPDATE analytics_tokenusage SET cost = 0", "DELETE FROM analytics_tokenusage"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute(statement)
            raw_app_connection.rollback()
            cur.execute("SELECT set_config('app.user_id', %s, true)", [str(alice.pk)])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(
                "INSERT INTO analytics_usagerollup (period, period_start, organization_id, user_id, provider, model, "
                "input_tokens, output_tokens, total_tokens, calls, errors, cost, updated_at) "
                "VALUES ('day', '2026-01-01', %s, %s, 'x', 'y', 1, 1, 2, 1, 0, 1, now())",
                [alice_org, alice.pk],
            )
    raw_app_connection.rollback()


def test_rollups_equal_the_ledger_with_concurrent_writers_and_rollups():
    members = [make_member() for _ in range(4)]
    writers, batches, per_batch = 4, 12, 25
    errors, stop = [], threading.Event()
    base = datetime.now(UTC)

    def write(index):
        user, org = members[index]
        try:
            for batch in range(batches):
                records = [
                    usage_fields(
                        user,
                        org,
                        model=f"m{(batch + i) % 3}",
                        provider=("openai", "anthropic")[i % 2],
                        created_at=base - timedelta(days=(batch + i) % 3),
                        success=(i % 9 != 0),
                    )
                    for i in range(per_batch)
                ]
                with transaction.atomic():
                    _as(user)
                    services.usage_record_batch(records=records)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    def roll():
        try:
            while not stop.is_set():
                services.usage_rollup()
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    rollers = [threading.Thread(target=roll) for _ in range(2)]
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in rollers + threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in rollers:
        t.join()
    assert not errors, errors
    services.usage_rollup()
    again = services.usage_rollup()  # rerun: nothing new, same totals
    assert again.rows == 0
    ledger = _ledger_totals()
    assert sum(r[8] for r in ledger) == writers * batches * per_batch
    assert _rollup_totals("day") == ledger
    assert _rollup_totals("month") == _monthly_from_daily(ledger)


def test_overlapping_rollups_do_nothing_twice():
    user, org = make_member()
    with transaction.atomic():
        _as(user)
        services.usage_record_batch(records=[usage_fields(user, org) for _ in range(10)])
    with rls.privileged(reason="test: hold the rollup lock"), connections["privileged"].cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [services.ROLLUP_LOCK])
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=services.usage_rollup()) or connections.close_all())
        thread.start()
        thread.join()
    assert result["r"].ran is False
    assert services.usage_rollup().rows == 10
    assert _rollup_totals("day") == _ledger_totals()


def _worker_env():
    def url(alias):
        db = connections[alias].settings_dict  # NAME is the test database's
        return f"postgres://{db['USER']}@/{db['NAME']}?host={db['HOST']}"

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": url("owner"),
        "DATABASE_APP_URL": url("default"),
        "DATABASE_WORKER_URL": url("privileged"),
        "REDIS_URL": settings.REDIS_URL,
    }


def _rollup_backend_waiting():
    # As the worker role: pg_stat_activity shows a session's query only to its own role.
    with connections["privileged"].cursor() as cur:
        cur.execute("""SELECT pid, wait_event_type FROM pg_stat_activity WHERE datname = current_database()
                       AND pid <> pg_backend_pid() AND query LIKE '%%INSERT INTO analytics_usagerollup%%'""")
        return cur.fetchone()


def test_a_worker_killed_mid_rollup_leaves_totals_the_next_run_completes_exactly():
    from analytics.tasks import usage_rollup_task

    user, org = make_member()
    with transaction.atomic():
        _as(user)
        services.usage_record_batch(records=[usage_fields(user, org) for _ in range(10)])
    services.usage_rollup()
    committed = _rollup_totals("day")
    with transaction.atomic():
        _as(user)
        services.usage_record_batch(records=[usage_fields(user, org) for _ in range(40)])
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "-l", "WARNING", "-Q", "rollup-kill-test"],
        env=_worker_env(),
        cwd=settings.BASE_DIR,
        start_new_session=True,
    )
    try:
        # Another session holds the rollup rows: the run stops inside its transaction, mid-write.
        with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
            cur.execute("SELECT 1 FROM analytics_usagerollup FOR UPDATE")
            usage_rollup_task.apply_async(queue="rollup-kill-test")
            deadline = time.monotonic() + 60
            while (_rollup_backend_waiting() or (None, None))[1] != "Lock":
                assert time.monotonic() < deadline, "the worker never reached the middle of the rollup"
                assert worker.poll() is None, "the worker died early"
                time.sleep(0.2)
            os.killpg(worker.pid, signal.SIGKILL)  # mid-transaction: the watermark moved, not committed
            worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _rollup_backend_waiting() is not None:  # PostgreSQL finds its client gone and aborts
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _rollup_totals("day") == committed
    assert services.usage_rollup().rows == 40
    assert _rollup_totals("day") == _ledger_totals()
    get_redis_connection("default").delete("rollup-kill-test")  # the redelivered message's queue


def test_live_counters_equal_the_ledger_after_a_redis_flush_and_rebuild():
    members = [make_member() for _ in range(3)]
    for user, org in members:
        with transaction.atomic():
            _as(user)
            services.usage_record_batch(records=[usage_fields(user, org) for _ in range(7)])
    services.usage_rollup()  # part of the month is in rollups...
    user, org = members[0]
    with transaction.atomic():
        _as(user)
        services.usage_record_batch(records=[usage_fields(user, org) for _ in range(5)])  # ...and part is the ledger tail
    get_redis_connection("default").flushdb()
    for user, org in members:
        for scope, owner, column in (("org", org, "organization_id"), ("user", user.pk, "user_id")):
            live = counters.counters_read(scope=scope, owner_id=owner)
            with connections["owner"].cursor() as cur:
                cur.execute(
                    f"SELECT sum(input_tokens), sum(output_tokens), sum(total_tokens), count(*), sum(cost) "
                    f"FROM analytics_tokenusage WHERE {column} = %s",
                    [owner],
                )
                i, o, t, c, cost = cur.fetchone()
            # The live counter keeps whole 1e-10 USD units (counters.py), as exact as the ledger.
            assert (live.input_tokens, live.output_tokens, live.total_tokens, live.calls) == (i, o, t, c)
            assert live.cost == cost
    # Live increments continue on the rebuilt counter.
    user, org = members[0]
    with transaction.atomic():
        _as(user)
        services.usage_record(**usage_fields(user, org, input_tokens=10, output_tokens=0, input_price=Decimal("100")))
    assert counters.counters_read(scope="user", owner_id=user.pk).calls == 13


def test_reconciliation_repairs_and_reports_drift(caplog):
    user, org = make_member()
    with transaction.atomic():
        _as(user)
        services.usage_record_batch(records=[usage_fields(user, org) for _ in range(3)])
    truth = counters.counters_read(scope="user", owner_id=user.pk)
    key = counters.counter_key("user", user.pk, counters.month_of())
    get_redis_connection("default").hincrby(key, "total_tokens", 999)  # lost or doubled increments
    repaired = counters.counters_reconcile()
    assert [r["key"] for r in repaired] == [key]
    assert "drift repaired" in caplog.text
    assert counters.counters_read(scope="user", owner_id=user.pk) == truth
    assert counters.counters_reconcile() == []


def _write_while_reconciling(*, writers: int, per_writer: int) -> tuple:
    """Writers record calls for one user while reconciliation runs, until a quarter of the
    writes are left (so no reconcile run can repair a loss after); returns the user and org."""
    user, org = make_member()
    counters.counters_read(scope="org", owner_id=org)  # live counters exist, so increments land on them
    counters.counters_read(scope="user", owner_id=user.pk)
    errors, done = [], threading.Event()

    def write():
        try:
            for n in range(per_writer):
                with transaction.atomic():
                    _as(user)
                    services.usage_record(**usage_fields(user, org))
                if n == per_writer * 3 // 4:
                    done.set()
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    def reconcile():
        try:
            while not done.is_set():
                counters.counters_reconcile()
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reconcile), *[threading.Thread(target=write) for _ in range(writers)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return user, org


def test_reconciliation_keeps_increments_that_land_while_it_runs():
    client, drift = get_redis_connection("default"), []
    for _ in range(5):  # each round has its own user and organization
        user, org = _write_while_reconciling(writers=4, per_writer=60)
        with connections["owner"].cursor() as cur:
            cur.execute("SELECT count(*), sum(total_tokens) FROM analytics_tokenusage WHERE user_id = %s", [user.pk])
            ledger = cur.fetchone()
        assert ledger[0] == 4 * 60
        for scope, owner in (("org", org), ("user", user.pk)):
            live = counters._parse(client.hgetall(counters.counter_key(scope, owner, counters.month_of())))
            if (live.calls, live.total_tokens) != ledger:
                drift.append((scope, (live.calls, live.total_tokens), ledger))
    assert drift == []


def test_a_counter_repaired_while_a_calls_increment_is_in_flight_counts_the_call_once(monkeypatch):
    """A user's live counters exist. A call's ledger row commits; its counter increment (sent after
    the commit, held until the reservation settles) is delayed: a worker paused by GC or a CPU-starved
    box, a slow Redis round trip. The hourly counters_reconcile sees the same drift twice,
    SETTLE_SECONDS apart, and adds it. Then the increment arrives and is added too: the counter
    reads the call twice, forever (every later repair measures from there only if the drift is seen
    again; the plan limit is reached early). A rebuilt counter already guards against this with the
    snapshot it read ('seen'); a repair should do the same (record the snapshot its ledger read saw,
    so an increment of a transaction it counted is not added again).
    Now: the live counter is the ledger plus one call. Should: equal the ledger."""
    user, org = make_member()
    counters.counters_read(scope="user", owner_id=user.pk)  # both counters exist, as on a busy day
    counters.counters_read(scope="org", owner_id=org)
    monkeypatch.setattr(counters, "SETTLE_SECONDS", 0.05)
    committed, repaired = threading.Event(), threading.Event()
    original = services._count_live

    def delayed(totals):
        committed.set()  # the ledger row is committed; its increment is in flight
        assert repaired.wait(30)
        original(totals)

    monkeypatch.setattr(services, "_count_live", delayed)
    errors = []

    def call():
        with transaction.atomic():
            _as(user)
            services.usage_record(**usage_fields(user, org))

    thread = on_a_thread(call, errors)
    assert committed.wait(30)
    fixed = counters.counters_reconcile()
    repaired.set()
    thread.join(30)
    assert not errors, errors
    assert len(fixed) == 2  # both counters were missing the committed call
    for scope, owner in (("user", user.pk), ("org", org)):
        live = counters.counters_read(scope=scope, owner_id=owner)
        truth = counters.usage_from_database(scope=scope, owner_id=owner, month=counters.month_of())
        assert truth.calls == 1
        assert live == truth, f"{scope} counter {live} != ledger {truth}: the call was counted twice"


def test_request_ids_are_forgotten_after_the_dedupe_window_and_remembered_within_it():
    user, org = make_member()
    now = datetime.now(UTC)
    window = services.USAGE_DEDUPE_WINDOW
    with connections["owner"].cursor() as cur:
        cur.execute(
            "INSERT INTO analytics_usagerequest (request_id, created_at) SELECT 'old-' || n, %s FROM generate_series(1, 2500) n",
            [now - window - timedelta(hours=1)],
        )
    recent = usage_fields(user, org, request_id="req-recent-retry")
    with transaction.atomic():
        _as(user)
        assert services.usage_record(**recent) is not None
    with connections["owner"].cursor() as cur:  # just inside the window: kept
        cur.execute(
            "UPDATE analytics_usagerequest SET created_at = %s WHERE request_id = %s",
            [now - window + timedelta(hours=1), "req-recent-retry"],
        )
    assert services.usage_requests_prune() == 2500
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT request_id FROM analytics_usagerequest")
        assert [r[0] for r in cur.fetchall()] == ["req-recent-retry"]
    with transaction.atomic():
        _as(user)
        assert services.usage_record(**recent) is None  # a retry inside the window still records nothing
    assert services.usage_requests_prune() == 0


def test_the_web_role_cannot_make_its_own_call_unmetered_by_pre_recording_its_request_id(raw_app_connection):
    """The ledger is append-only for the web role (UPDATE and DELETE revoked, rows only for its own
    user), so that SQL run as that role cannot make usage disappear. But the ledger's once-only
    table, analytics_usagerequest, has no row-level security and the web role may INSERT any id
    into it (and SELECT every tenant's ids and times). A call's request id is known to its user
    while the call runs (the gateway's `chatcmpl-<request_id>`, in the first chunk of a stream; the
    reply's metadata): inserting it first makes usage_record skip the call as "already recorded".
    The call is answered and never metered: no ledger row, no counter, no rollup, no bill.
    Now: the raw INSERT succeeds and usage_record records nothing. Should: the web role cannot
    write request ids except through the ledger write (e.g. a SECURITY DEFINER function, or a
    policy tying the id to a ledger row written in the same statement), and cannot read other
    tenants' ids; the call is metered."""
    alice, alice_org = make_member()
    request_id = uuid.uuid4().hex  # the id of alice's call in progress, as the gateway shows it
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, false)", [str(alice.pk)])
        try:
            cur.execute("INSERT INTO analytics_usagerequest (request_id, created_at) VALUES (%s, now())", [request_id])
            raw_app_connection.commit()
        except psycopg.Error:
            raw_app_connection.rollback()
    with transaction.atomic():
        _as(alice)
        services.usage_record(**usage_fields(alice, alice_org, request_id=request_id, input_tokens=5000, output_tokens=2000))
    metered = TokenUsage.objects.using("privileged").filter(request_id=request_id).count()
    assert metered == 1, "the call was answered and never metered: its request id was pre-recorded by the web role"


def test_request_ids_are_recorded_only_with_their_ledger_row(raw_app_connection):
    """The web role reads no request ids, cannot run the trigger that records them, and a ledger
    row that its row-level security refuses records no id: the call of that id is still metered."""
    alice, alice_org = make_member()
    bob, bob_org = make_member()
    with transaction.atomic():
        _as(bob)
        services.usage_record(**usage_fields(bob, bob_org))
    request_id = uuid.uuid4().hex
    refused = (
        "SELECT count(*) FROM analytics_usagerequest",
        "SELECT analytics_tokenusage_request_once()",
        "WITH once AS (SELECT set_config('confab.ledger_once', 'on', true)) "
        "INSERT INTO analytics_tokenusage (created_at, user_id, organization_id, provider, model, input_tokens, output_tokens, "
        "total_tokens, input_price, output_price, cost, request_id) "
        f"SELECT now(), '{bob.pk}', '{bob_org}', 'openai', 'm', 0, 0, 0, 0, 0, 0, '{request_id}' FROM once",
    )
    with raw_app_connection.cursor() as cur:
        for statement in refused:
            cur.execute("SELECT set_config('app.user_id', %s, false)", [str(alice.pk)])
            with pytest.raises(psycopg.Error):
                cur.execute(statement)
            raw_app_connection.rollback()
    with transaction.atomic():
        _as(bob)
        assert services.usage_record(**usage_fields(bob, bob_org, request_id=request_id)) is not None


def _request_ids_guarded() -> tuple:
    """(the app role may read or write request ids, the ledger's trigger records them)."""
    with connections["owner"].cursor() as cur:
        cur.execute(
            "SELECT has_table_privilege(%s, 'analytics_usagerequest', 'SELECT, INSERT'), "
            "EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'analytics_tokenusage_request_once')",
            [settings.DATABASES["default"]["USER"]],
        )
        return cur.fetchone()


def test_the_request_id_migration_reverses_and_applies_again():
    executor = MigrationExecutor(connections["owner"])
    leaves = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "analytics"]
    executor.migrate([("analytics", "0010_audit_log_moves_between_partitions")])
    try:
        assert _request_ids_guarded() == (True, False)
    finally:
        MigrationExecutor(connections["owner"]).migrate(leaves)
    assert _request_ids_guarded() == (False, True)
