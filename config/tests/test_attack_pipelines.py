"""Attack probes on the send's pipelined transactions (config/db/backend run_first, run_last,
run_alone, _commit, _close; rls.first_statement_as; rows.insert_rows `last`) and on the pooled
connections they run on, under real PostgreSQL (and a real server where the pool matters).

The first section failed on the code it was written against; the last one ("What held") passed."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction

from accounts.services import provider_credential_set
from accounts.tests.factories import make_user
from accounts.tests.test_api import key_client
from analytics.models import TokenUsage
from billing.tests.factories import make_plans, organization_of, put_on_plan
from chat.models import Conversation, Message
from chat.tests.provider_servers import ProviderServer, Reply, _Handler, openai_completion
from config.db import rls
from config.tests.races import until
from config.tests.serving import served
from config.tests.test_pool_check import _LEAK_SQL, LEAKED, _backend_pid, _leaked, _terminate

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"
ALICE = "00000000-0000-0000-0000-00000000a11c"
CONTEXT = f"SET LOCAL app.user_id = '{ALICE}'"
IDLE = psycopg.pq.TransactionStatus.IDLE
LOCKED = "SELECT pg_advisory_xact_lock(%(k)s), current_setting('app.user_id')"


@pytest.fixture
def plans(django_db_blocker):
    with django_db_blocker.unblock():
        return make_plans()


@pytest.fixture
def registered(pooled):
    """The pooled connection (a pool of one) as an alias Django's atomic blocks can use."""
    _backend_pid(pooled)
    pooled.set_autocommit(True)
    connections[pooled.alias] = pooled
    yield pooled
    del connections[pooled.alias]


def _raw() -> psycopg.Connection:
    """A connection of the app role of its own, outside Django and the pool."""
    db = connections["default"].settings_dict
    return psycopg.connect(dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or None, autocommit=True)


def _waits_on_a_lock(pid: int) -> bool:
    with _raw() as conn:
        return conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() == (True,)


@pytest.fixture
def lock_held():
    """Advisory lock 4242 held by a transaction of another session until the test releases it."""
    holder = _raw()
    holder.autocommit = False
    holder.execute("SELECT pg_advisory_xact_lock(4242)")
    yield holder
    holder.close()


def _session(wrapper) -> tuple:
    return wrapper.connection.execute(
        "SELECT current_setting('app.user_id', true), current_setting('synchronous_commit'), current_setting('statement_timeout')"
    ).fetchone()


class _GatedHandler(_Handler):
    def do_POST(self):
        self.server.arrived.set()
        self.server.release.wait(60)
        super().do_POST()


class GatedServer(ProviderServer):
    """An OpenAI-format server that holds each answer until the test releases it."""

    def __init__(self):
        super().__init__()
        self.RequestHandlerClass = _GatedHandler
        self.arrived, self.release = threading.Event(), threading.Event()


@pytest.fixture
def gated():
    server = GatedServer().start()
    yield server
    server.release.set()
    server.stop()


def _api(user) -> tuple[object, dict]:
    client = key_client(user, scopes=["chat:read", "chat:write"])
    return client, {"Authorization": f"Bearer {client.secret}"}


# --- Failed on the code they were written against -------------------------------------------------


def test_a_send_waiting_on_its_provider_holds_no_pooled_connection_of_any_alias(catalog, plans, gated):
    """rls.connection_release() gives back only the current alias's connection before the provider
    call. A send whose prepare used the privileged alias (a new conversation's count on a plan
    that limits them, the usage counters rebuilt from the ledger, every send while Redis is down)
    keeps that pooled connection through the whole provider wait. Another send that needs it then
    waits the pool's timeout holding its app connection and its conversation's row lock, and is
    a 500 (PoolTimeout); two such sends deadlock (each holds what the other waits for)."""
    alice, bob = make_user(), make_user()
    with rls.privileged(reason="test: alice's own key at a slow provider"):
        provider_credential_set(user=alice, provider="openai", api_key="sk-gated-0123456789abcdef", base_url=f"{gated.url}/v1")
    gated.queue(Reply(body=openai_completion("slow answer", {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})))
    (a, ha), (b, hb) = _api(alice), _api(bob)
    alices = a.post(f"{API}/conversations", {}, format="json").json()["id"]  # free plan: its first send counts conversations
    bobs = b.post(f"{API}/conversations", {}, format="json").json()["id"]
    answers = {}
    with served(workers=1, DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="1", DATABASE_POOL_TIMEOUT="3") as base:

        def alice_sends():
            with httpx.Client(base_url=base, timeout=60) as http:
                body = {"content": "a slow one", "provider": "openai", "model": "gpt-4o-mini"}
                answers["alice"] = http.post(f"{API}/conversations/{alices}/messages", json=body, headers=ha)

        thread = threading.Thread(target=alice_sends)
        thread.start()
        assert gated.arrived.wait(30), "alice's call never reached the provider"
        with httpx.Client(base_url=base, timeout=60) as http:  # alice's send is waiting on its provider
            answers["bob"] = http.post(f"{API}/conversations/{bobs}/messages", json={"content": "a quick one"}, headers=hb)
        gated.release.set()
        thread.join(60)
    assert answers["alice"].status_code == 201, answers["alice"].text[:300]
    assert answers["bob"].status_code == 201, answers["bob"].text[:300]


@pytest.mark.parametrize("begun", [True, False], ids=["mid-transaction", "autocommit off, idle"])
def test_a_connection_given_back_with_autocommit_off_goes_back_without_its_session_state(pooled, begun):
    """_close runs the check-in reset (RESET ALL) on a connection Django gives back with autocommit
    off (from inside a transaction): psycopg opens a transaction for it, the pool's putconn finds
    the connection INTRANS and rolls it back, so RESET ALL is undone, while the connection is
    stamped as reset. The session-level setting goes to the next user."""
    pid = _backend_pid(pooled)
    pooled.connection.execute(_LEAK_SQL, [LEAKED])  # a session-level setting, committed (autocommit)
    pooled.set_autocommit(False)
    if begun:
        with pooled.cursor() as cur:
            cur.execute("SELECT 1")
    pooled.close()
    assert _backend_pid(pooled) == pid  # the same session, from the pool of one
    assert not _leaked(pooled)


# --- What held -----------------------------------------------------------------------------------


def test_held_a_first_statement_cancelled_while_waiting_on_a_lock_leaves_the_connection_clean(registered, lock_held):
    """statement_timeout fires while run_first's statement waits on a lock: the error is Django's,
    the block rolls back, nothing of the transaction's settings stays, and the same statements
    (prepared in psycopg's cache) run again on the connection, first and last."""
    setup = [CONTEXT, "SET LOCAL statement_timeout = '300ms'", rls.ASYNCHRONOUS_COMMIT]
    with pytest.raises(OperationalError, match="statement timeout"), transaction.atomic(using=registered.alias):
        registered.run_first(setup, LOCKED, {"k": 4242})
    assert registered.connection.info.transaction_status == IDLE
    assert _session(registered) == ("", "on", "0")
    lock_held.rollback()
    registered.connection.execute("CREATE TEMP TABLE IF NOT EXISTS noted (id int PRIMARY KEY)")
    for attempt in range(3):
        with transaction.atomic(using=registered.alias):
            assert registered.run_first(setup, LOCKED, {"k": 4242}) == [("", ALICE)]
            assert registered.run_last("INSERT INTO noted VALUES (%(n)s)", {"n": attempt}) == []
    with pytest.raises(IntegrityError), transaction.atomic(using=registered.alias):
        registered.run_first(setup, LOCKED, {"k": 4242})
        registered.run_last("INSERT INTO noted VALUES (%(n)s)", {"n": 0})
    with transaction.atomic(using=registered.alias):  # after that rollback (psycopg's DEALLOCATE ALL): prepared afresh
        assert registered.run_first(setup, LOCKED, {"k": 4242}) == [("", ALICE)]
        registered.run_last("INSERT INTO noted VALUES (%(n)s)", {"n": 9})
    assert _session(registered) == ("", "on", "0")
    assert registered.connection.execute("SELECT count(*) FROM noted").fetchone() == (4,)


def test_held_a_backend_killed_while_run_first_waits_on_a_lock_is_a_database_error_and_replaced(registered, lock_held):
    pid = _backend_pid(registered)

    def kill():
        try:
            until(lambda: _waits_on_a_lock(pid), "run_first waiting on the lock")
            _terminate(pid)
        finally:
            lock_held.rollback()

    killer = threading.Thread(target=kill)
    killer.start()
    with pytest.raises(DatabaseError), transaction.atomic(using=registered.alias):
        registered.run_first([CONTEXT], LOCKED, {"k": 4242})
    killer.join()
    registered.close()
    assert _backend_pid(registered) != pid
    with transaction.atomic(using=registered.alias):
        assert registered.run_first([CONTEXT], LOCKED, {"k": 4242}) == [("", ALICE)]


@pytest.mark.parametrize("pool, prepared", [("1", "true"), ("2", "false")])
def test_held_concurrent_sends_with_refusals_interleaved_under_the_pool(catalog, plans, pool, prepared):
    """Two workers, a pool of one or two, prepared statements on or off; the conversations already
    have a message (so no send needs the privileged alias: see the first test)."""
    alice, bob = make_user(), make_user()
    put_on_plan(organization_of(alice), plans["enterprise"])
    (a, ha), (b, hb) = _api(alice), _api(bob)
    mine = a.post(f"{API}/conversations", {}, format="json").json()["id"]
    bobs = b.post(f"{API}/conversations", {}, format="json").json()["id"]
    assert a.post(f"{API}/conversations/{mine}/messages", {"content": "warm"}, format="json").status_code == 201
    assert b.post(f"{API}/conversations/{bobs}/messages", {"content": "warm"}, format="json").status_code == 201
    sends = {
        "good": (f"{API}/conversations/{mine}/messages", {"content": "hi there"}, ha),
        "stream": (f"{API}/conversations/{mine}/messages?stream=true", {"content": "hi stream"}, ha),
        "unknown model": (f"{API}/conversations/{mine}/messages", {"content": "x", "provider": "openai", "model": "gpt-7"}, ha),
        "bob's": (f"{API}/conversations/{bobs}/messages", {"content": "x"}, ha),
        "missing": (f"{API}/conversations/00000000-0000-0000-0000-000000000000/messages", {"content": "x"}, ha),
        "bob": (f"{API}/conversations/{bobs}/messages", {"content": "bob here"}, hb),  # free plan: 10 a minute, then 429
    }
    expected = {"good": {201}, "stream": {200}, "unknown model": {400}, "bob's": {404}, "missing": {404}, "bob": {201, 429}}
    kinds = ["good", "unknown model", "bob's", "bob", "stream", "good", "bob", "missing"] * 5
    with served(workers=2, DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE=pool, DATABASE_PREPARED_STATEMENTS=prepared) as base:

        def one(kind):
            url, body, headers = sends[kind]
            with httpx.Client(base_url=base, timeout=60) as http:
                response = http.post(url, json=body, headers=headers)
                return kind, response.status_code, response.text[:200]

        with ThreadPoolExecutor(12) as pool_:
            outcomes = list(pool_.map(one, kinds))
    assert [o for o in outcomes if o[1] not in expected[o[0]]] == [], Counter((k, s) for k, s, _ in outcomes)
    counts = {mine: 1 + sum(k in ("good", "stream") for k, _, _ in outcomes), bobs: 1 + sum(o[:2] == ("bob", 201) for o in outcomes)}
    with rls.privileged(reason="test: read back"):
        for conversation_id, sent in counts.items():
            conversation = Conversation.objects.get(pk=conversation_id)
            messages = list(Message.objects.filter(conversation_id=conversation_id).order_by("sequence"))
            replies = [m for m in messages if m.role == "assistant"]
            assert conversation.message_count == len(messages) == 2 * sent
            assert [m.sequence for m in messages] == list(range(1, 2 * sent + 1))
            assert {m.status for m in replies} == {"complete"}
            assert TokenUsage.objects.filter(conversation_id=conversation_id).count() == sent
            assert conversation.total_tokens == sum(m.input_tokens + m.output_tokens for m in replies)
