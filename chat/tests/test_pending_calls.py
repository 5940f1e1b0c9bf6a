"""An unstored call (the gateway's default: SuppliedHistory with store=False) keeps a PendingCall
row from its check to its ledger row (issue #10), so no model call goes unmetered: a worker
killed mid-call is metered once by the stale pass, which releases its reservation; a finish and
the stale pass racing for one call leave one ledger row; the row is its user's alone. Real
PostgreSQL, Redis and processes."""

import math
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.db import connections, transaction
from django.utils import timezone

from analytics.models import TokenUsage
from billing.tests.factories import plan_with_limits
from billing.tests.test_reservations import NOTHING_OPEN, _counters_equal_ledger, _member, _open
from chat import services
from chat.models import PendingCall
from chat.tests.test_send_race import worker_killed_mid_call
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)
UNSTORED = services.SuppliedHistory()  # what the gateway sends without X-Confab-Store
CONTENT = "a long answer please"  # 20 characters: a prompt estimate of 5 tokens
LIMIT = 10_000  # a monthly limit, so every call holds a reservation


def _tenant(slug: str = "pending-calls"):
    return _member(plan_with_limits(slug, monthly_tokens=LIMIT))


def _prepare(user) -> services.PendingReply:
    return services.message_prepare(user=user, content=CONTENT, supplied=UNSTORED)


def _finish(pending: services.PendingReply) -> dict:
    """Read the reply to its end as the gateway's stream does; the `done` event."""

    async def read() -> list[dict]:
        return [event async for event in services.message_stream(pending=pending)]

    return async_to_sync(read)()[-1]


@pytest.fixture
def settled(monkeypatch) -> list[bool]:
    """What each release of a reservation answered (True: it released it), the real call observed."""
    answers = []

    def observed(**kwargs) -> bool:
        answers.append(real(**kwargs))
        return answers[-1]

    real = services.reservation_settle
    monkeypatch.setattr(services, "reservation_settle", observed)
    return answers


def _ledger(request_id: str) -> list[TokenUsage]:
    with rls.privileged(reason="test"):
        return list(TokenUsage.objects.filter(request_id=request_id))


def _pending_calls() -> list[PendingCall]:
    with rls.privileged(reason="test"):
        return list(PendingCall.objects.all())


@pytest.fixture
def unstored(catalog, settings) -> tuple:
    """(user, organization, a prepared unstored call); echo answers at once."""
    settings.CHAT_ECHO_DELAY = 0
    user, org = _tenant()
    return user, org, _prepare(user)


def _nothing_left(user, org) -> None:
    """No call row left, nothing reserved, the live counters equal to the ledger."""
    assert _pending_calls() == [] and _open(org) == NOTHING_OPEN
    _counters_equal_ledger(user, org)


def test_an_unstored_call_holds_a_row_without_content_until_its_ledger_row(unstored):
    user, org, pending = unstored
    [call] = _pending_calls()
    assert (call.request_id, call.user_id, call.organization_id) == (pending.request_id, user.pk, org.pk)
    assert call.prompt_tokens_estimate == math.ceil(len(CONTENT) / 4) and call.reservation["reservation"]
    assert CONTENT not in str(vars(call))  # the user asked us not to keep the conversation
    assert _open(org)["calls"] == 1

    done = _finish(pending)

    assert done["status"] == "complete" and _pending_calls() == []
    [row] = _ledger(pending.request_id)
    assert not row.estimated and row.conversation_id is None and row.output_tokens > 0
    assert services.streams_close_stale(older_than_minutes=0) == 0  # nothing left to close
    assert len(_ledger(pending.request_id)) == 1
    reply = services.message_send(user=user, content=CONTENT, supplied=UNSTORED)  # the whole-reply door
    assert len(_ledger(reply.message.metadata["request_id"])) == 1
    _nothing_left(user, org)


def test_an_unstored_call_whose_worker_is_killed_is_metered_once_by_the_stale_pass(catalog, settled):
    user, org = _tenant("killed-gateway")
    request_id = worker_killed_mid_call(user, content=CONTENT, supplied=UNSTORED)["request_id"]
    assert _open(org)["calls"] == 1 and _ledger(request_id) == []
    assert services.streams_close_stale() == 0  # not stale yet: its call may still be running
    with rls.privileged(reason="test: the worker died long ago"):
        PendingCall.objects.filter(request_id=request_id).update(created_at=timezone.now() - timedelta(hours=1))

    assert services.streams_close_stale() == 1
    assert services.streams_close_stale() == 0

    [row] = _ledger(request_id)
    assert row.estimated and row.user_id == user.pk and row.organization_id == org.pk
    assert (row.input_tokens, row.output_tokens, row.conversation_id, row.message_id) == (math.ceil(len(CONTENT) / 4), 0, None, None)
    assert settled == [True]  # released by the stale pass, not left to expire
    _nothing_left(user, org)


# --- The finish and the stale pass racing for one call --------------------------------


@contextmanager
def _ledger_held():
    """The owner locks the ledger's request ids: whoever meters next waits at its ledger insert,
    still holding what it locked before, until the block ends."""
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
        cur.execute("LOCK TABLE analytics_usagerequest IN EXCLUSIVE MODE")
        yield


def _await_waiting(sessions: int) -> None:
    """Until that many database sessions wait on a lock (pg_locks is live, not a snapshot)."""
    deadline = time.monotonic() + 30
    with connections["owner"].cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")
            if cur.fetchone()[0] >= sessions:
                return
            time.sleep(0.02)
    raise AssertionError(f"{sessions} session(s) never waited on a lock")


def _in_thread(results: dict, name: str, work) -> threading.Thread:
    def run():
        try:
            results[name] = work()
        except Exception as exc:  # surfaced in the test
            results[name] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_the_stale_pass_first_then_the_finish_meter_the_call_once(unstored, settled):
    user, org, pending = unstored
    results: dict = {}
    with _ledger_held():
        stale = _in_thread(results, "stale", lambda: services.streams_close_stale(older_than_minutes=0))
        _await_waiting(1)  # the stale pass holds the call's row and waits to meter it
        finish = _in_thread(results, "finish", lambda: _finish(pending))
        _await_waiting(2)  # the finish's DELETE waits on that row
    stale.join(30), finish.join(30)

    assert results["stale"] == 1 and results["finish"]["status"] == "complete", results
    [row] = _ledger(pending.request_id)
    assert row.estimated and row.output_tokens == 0  # the stale pass's: the finish found its row gone
    assert sorted(settled) == [False, True]  # released once; the finish's second release finds nothing
    _nothing_left(user, org)


def test_the_finish_first_then_the_stale_pass_meter_the_call_once(unstored, settled):
    user, org, pending = unstored
    results: dict = {}
    with _ledger_held():
        finish = _in_thread(results, "finish", lambda: _finish(pending))
        _await_waiting(1)  # the finish deleted the call's row and waits to write its ledger row
        assert services.streams_close_stale(older_than_minutes=0) == 0  # that row is locked: skipped
    finish.join(30)

    assert results["finish"]["status"] == "complete", results
    [row] = _ledger(pending.request_id)
    assert not row.estimated and row.output_tokens > 0 and settled == [True]
    _nothing_left(user, org)


# --- Row-level security ---------------------------------------------------------------


def _as(cur, user) -> None:
    cur.execute("SELECT set_config('app.user_id', %s, true)", [str(user.pk) if user else ""])


INSERT = (
    "INSERT INTO chat_pendingcall (id, user_id, organization_id, request_id, provider, model, price_id, prompt_tokens_estimate,"
    " key_source, reservation, created_at) VALUES (gen_random_uuid(), %s, %s, md5(random()::text), 'echo', 'echo-1',"
    " gen_random_uuid(), 5, 'none', '{}', now())"
)


def test_another_user_cannot_read_or_write_pending_calls_as_the_web_role(raw_app_connection, catalog):
    (alice, alices_org), (bob, bobs_org) = _tenant(), _tenant()
    _prepare(alice), _prepare(bob)
    with raw_app_connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM chat_pendingcall")
        assert cur.fetchone()[0] == 0  # no context, no rows
        _as(cur, alice)
        cur.execute("SELECT DISTINCT user_id FROM chat_pendingcall")
        assert cur.fetchall() == [(alice.pk,)]
        cur.execute("DELETE FROM chat_pendingcall WHERE user_id = %s", [bob.pk])
        assert cur.rowcount == 0
        cur.execute(INSERT, [alice.pk, alices_org.pk])  # one's own call in one's own organization
        for params in ([bob.pk, bobs_org.pk], [alice.pk, bobs_org.pk]):  # as someone else; billed to another's organization
            raw_app_connection.rollback()
            _as(cur, alice)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute(INSERT, params)
        raw_app_connection.rollback()
        _as(cur, alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the web role never updates one
            cur.execute("UPDATE chat_pendingcall SET created_at = now()")
    raw_app_connection.rollback()
    assert {call.user_id for call in _pending_calls()} == {alice.pk, bob.pk}
