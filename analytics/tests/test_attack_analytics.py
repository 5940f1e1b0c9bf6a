"""Attack tests on analytics: isolation, inputs, exactness, staff. Three failed before their fix:
a daily query whose default start fell before the year 1 (a 500); an audit entry in the default
partition, which the immutability trigger would not let partition upkeep move (upkeep failed for
good); a live counter rebuilt between a call's commit and its increment (the call counted twice)."""

import threading
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connections

from analytics import buffer, tasks
from analytics.models import AuditLog, Event
from analytics.tests.factories import make_member
from analytics.tests.test_usage_api import session_client
from analytics.tests.usage_data import usage_world
from config.db import partitions, rls
from config.tests.races import on_a_thread

pytestmark = pytest.mark.django_db(transaction=True)

SUMMARY, DAILY, EVENTS = "/api/v1/usage/summary", "/api/v1/usage/daily", "/api/v1/events"


# --- Inputs: date ranges ------------------------------------------------------------


@pytest.mark.parametrize("to", ["0001-01-01", "0001-01-29"])
def test_daily_with_a_to_in_year_one_and_no_from_is_a_400_not_a_500(to):
    """`from` defaults to 29 days before `to`; for a `to` in the first 29 days of year 1 that
    date does not exist (OverflowError): the answer must be a 400 with a message."""
    user, _ = make_member()
    response = session_client(user).get(DAILY, {"to": to})
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"message", "extra"} and body["message"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "0001-01-01", "to": "0001-01-01"},
        {"from": "9999-12-01", "to": "9999-12-31"},
        {"from": "0001-01-01", "to": "9999-12-31"},
        {"from": "2025-02-01", "to": "2025-01-01"},
        {"from": "0000-01-01"},
        {"to": "10000-01-01"},
        {"from": "2025-02-30"},
        {"from": "2025-01-01T00:00:00+14:00"},
        {"group_by": "organization"},
        {"organization": "not-a-uuid"},
    ],
)
def test_daily_odd_inputs_never_500(params):
    user, _ = make_member()
    response = session_client(user).get(DAILY, params)
    assert response.status_code in (200, 400), (params, response.status_code, response.content[:300])


# --- Isolation ----------------------------------------------------------------------


def test_by_member_for_another_tenant_answers_as_for_a_random_uuid():
    world = usage_world()
    bob = session_client(world.bob)  # a plain member of Acme
    for params in ({"group_by": "user", "organization": str(world.acme.pk)}, {"group_by": "user", "organization": str(world.beta.pk)}):
        theirs = bob.get(DAILY, params)
        random = bob.get(DAILY, {**params, "organization": str(uuid.uuid4())})
        assert (theirs.status_code, theirs.json()) == (random.status_code, random.json())
        assert theirs.status_code == 403
    for params in ({"group_by": "model", "organization": str(world.alice_personal)},):
        theirs = bob.get(DAILY, params)
        random = bob.get(DAILY, {**params, "organization": str(uuid.uuid4())})
        assert (theirs.status_code, theirs.json()) == (random.status_code, random.json()) == (200, [])


def test_dashboard_page_for_another_tenant_answers_as_for_a_random_uuid(client):
    world = usage_world()
    client.force_login(world.bob)
    for user, organization in ((world.bob, world.acme), (world.carol, world.beta)):
        client.force_login(user)
        theirs = client.get("/usage/", {"organization": str(organization.pk)})
        random = client.get("/usage/", {"organization": str(uuid.uuid4())})
        assert theirs.status_code == random.status_code
        if theirs.status_code == 200:
            assert theirs.context["organization"] is None and theirs.context.get("members") is None


# --- Inputs: events -----------------------------------------------------------------


@pytest.mark.parametrize(
    "occurred_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999"]
)
def test_event_with_an_extreme_occurred_at_is_refused_not_a_500(occurred_at):
    user, _ = make_member()
    response = session_client(user).post(EVENTS, {"events": [{"name": "x", "occurred_at": occurred_at}]}, format="json")
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert buffer.buffer_length("event") == 0


def test_event_fields_a_client_may_not_set_are_ignored():
    user, _ = make_member()
    other, other_org = make_member()
    forged = str(uuid.uuid4())
    response = session_client(user).post(
        EVENTS,
        {
            "events": [
                {
                    "name": "x",
                    "user_id": str(other.pk),
                    "user": str(other.pk),
                    "organization_id": str(other_org),
                    "event_uuid": forged,
                    "source": "server",
                }
            ]
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    assert buffer.buffer_flush("event") == 1
    [event] = Event.objects.using("privileged").all()
    assert (event.user_id, event.organization_id, event.source) == (user.pk, None, "client")
    assert str(event.event_uuid) != forged


# --- Partitions across month boundaries --------------------------------------------


def _default_rows(table):
    with connections["owner"].cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}_default")
        return cur.fetchone()[0]


def test_a_stray_audit_entry_in_the_default_partition_is_moved_like_any_other_log():
    """partition_ensure moves rows out of the default partition into their month (as it does for
    every log); the audit log's immutability trigger must not make the upkeep fail for it."""
    stray = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # a month with no partition: lands in the default
    buffer.buffer_push("audit", {"entry_uuid": str(uuid.uuid4()), "created_at": stray.isoformat(), "action": "login", "detail": {}})
    assert buffer.buffer_flush("audit") == 1
    assert _default_rows("analytics_auditlog") == 1
    created = partitions.partition_ensure("analytics_auditlog")
    assert "analytics_auditlog_p202506" in created
    assert _default_rows("analytics_auditlog") == 0
    assert AuditLog.objects.using("privileged").filter(created_at=stray).count() == 1


def test_partitions_upkeep_task_survives_a_stray_audit_entry():
    stray = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
    buffer.buffer_push("audit", {"entry_uuid": str(uuid.uuid4()), "created_at": stray.isoformat(), "action": "login", "detail": {}})
    assert buffer.buffer_flush("audit") == 1
    report = tasks.partitions_upkeep_task()
    assert "analytics_auditlog_p202507" in report["analytics_auditlog"]["created"]


# --- Exactness: live counters -------------------------------------------------------


def test_a_counter_rebuilt_between_a_call_commit_and_its_increment_counts_the_call_once(monkeypatch):
    """A counter missing from Redis (new month, Redis flushed) is rebuilt from the ledger. A call
    committed just before the rebuild is in the rebuilt figure; its increment, arriving after the
    rebuild, must not add it a second time (the live counter must equal the ledger)."""
    from django.db import transaction

    from analytics import counters, services
    from analytics.tests.factories import usage_fields

    user, org = make_member()
    get_redis = __import__("django_redis").get_redis_connection
    get_redis("default").flushdb()  # no live counter: the next read rebuilds it
    committed, rebuilt = threading.Event(), threading.Event()
    original = services._count_live

    def delayed(totals):
        committed.set()  # the ledger row is committed; its increment is in flight
        assert rebuilt.wait(10)
        original(totals)

    monkeypatch.setattr(services, "_count_live", delayed)
    errors = []

    def call():
        with transaction.atomic():
            rls.context_set(user_id=user.pk)
            services.usage_record(**usage_fields(user, org))

    thread = on_a_thread(call, errors)
    assert committed.wait(10)
    counters.counters_read(scope="user", owner_id=user.pk)  # rebuilt now: the committed call is in it
    rebuilt.set()
    thread.join(10)
    assert not errors
    live = counters.counters_read(scope="user", owner_id=user.pk)
    truth = counters.usage_from_database(scope="user", owner_id=user.pk, month=counters.month_of())
    assert truth.calls == 1
    assert live == truth, f"live counter {live} != ledger {truth}: the call was counted twice"


def test_a_counter_rebuilt_while_a_call_is_uncommitted_adds_the_call_when_it_commits(monkeypatch):
    """The other side of the rebuild's snapshot: a call still uncommitted when the counter is
    rebuilt is not in the rebuilt figure, so its increment, when it commits, must be added."""
    from django.db import transaction

    from analytics import counters, services
    from analytics.tests.factories import usage_fields

    user, org = make_member()
    __import__("django_redis").get_redis_connection("default").flushdb()
    written, rebuilt = threading.Event(), threading.Event()
    errors = []

    def call():
        with transaction.atomic():
            rls.context_set(user_id=user.pk)
            services.usage_record(**usage_fields(user, org))
            written.set()  # written, not committed: in progress for the rebuild's snapshot
            assert rebuilt.wait(10)

    thread = on_a_thread(call, errors)
    assert written.wait(10)
    assert counters.counters_read(scope="user", owner_id=user.pk).calls == 0  # rebuilt without it
    rebuilt.set()
    thread.join(10)
    assert not errors
    live = counters.counters_read(scope="user", owner_id=user.pk)
    truth = counters.usage_from_database(scope="user", owner_id=user.pk, month=counters.month_of())
    assert truth.calls == 1 and live == truth, f"live counter {live} != ledger {truth}"


# --- Staff ----------------------------------------------------------------------------


def test_staff_dashboard_is_refused_to_non_staff_and_audited_for_staff(client):
    world = usage_world()
    for user in (world.alice, world.bob):
        client.force_login(user)
        assert client.get("/usage/staff/").status_code == 403
    buffer.buffer_flush("audit")
    before = AuditLog.objects.using("privileged").filter(action="privileged_access").count()
    client.force_login(world.staff)
    assert client.get("/usage/staff/").status_code == 200
    buffer.buffer_flush("audit")
    entries = list(AuditLog.objects.using("privileged").filter(action="privileged_access").order_by("-created_at"))
    assert len(entries) == before + 1
    assert entries[0].user_id == world.staff.pk and entries[0].detail == {"reason": "staff usage dashboard"}
    client.force_login(world.bob)
    assert client.get("/admin/analytics/tokenusage/").status_code in (302, 403)


def test_ledger_rows_moved_out_of_the_default_partition_are_rolled_up_once():
    from django.db import transaction

    from analytics import services
    from analytics.tests.factories import usage_fields

    user, org = make_member()
    far = datetime(2028, 6, 15, 12, 0, tzinfo=UTC)  # no partition yet: the default holds it
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        services.usage_record_batch(records=[usage_fields(user, org, created_at=far) for _ in range(3)])
    assert _default_rows("analytics_tokenusage") == 3
    services.usage_rollup()
    assert "analytics_tokenusage_p202806" in partitions.partition_ensure("analytics_tokenusage")
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        services.usage_record(**usage_fields(user, org, created_at=far))
    services.usage_rollup()
    services.usage_rollup()
    with connections["owner"].cursor() as cur:
        cur.execute("SELECT count(*), sum(cost) FROM analytics_tokenusage WHERE user_id = %s", [user.pk])
        ledger = cur.fetchone()
        cur.execute("SELECT sum(calls), sum(cost) FROM analytics_usagerollup WHERE user_id = %s AND period = 'month'", [user.pk])
        rolled = cur.fetchone()
    assert ledger == (4, rolled[1]) and rolled[0] == 4
