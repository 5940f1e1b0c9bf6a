"""The metered message path's query budget (issue #10: 150 requests/s per core leaves about
6.7 ms of one core for everything): a regression that adds a query shows here.

The send runs on a thread of its own (chat.api._send_in_own_transactions), so the queries are
counted at the cursor, from every thread and database alias, not per connection."""

import threading

import httpx
import pytest
from django.db import connections
from django.db.backends.utils import CursorWrapper

from accounts import api_key_cache
from accounts.tests.test_api import key_client
from billing.tests.factories import organization_of, put_on_plan
from chat.tests.test_api import API
from config.db import rls
from config.db.backend.base import RESET_WITH_COMMIT_MARK, DatabaseWrapper
from config.tests.serving import served

pytestmark = pytest.mark.django_db(transaction=True)


class Recorded(list):
    """(alias, sql) of each statement; `how`, in the same order, how it went: 'cursor' (a round trip
    of its own, psycopg's BEGIN or COMMIT aside), or with its BEGIN and context ('first'), with its
    COMMIT ('last'), or both ('alone') in one round trip (config/db/backend)."""

    def __init__(self):
        super().__init__()
        self.how = []
        self.begun_with = []  # the commands each 'first' or 'alone' sent with its BEGIN

    def clear(self):
        super().clear()
        self.how.clear()
        self.begun_with.clear()


@pytest.fixture
def queries(monkeypatch):
    """Every statement any thread runs through Django, as (alias, sql), while the test runs."""
    seen, lock = Recorded(), threading.Lock()
    execute, executemany, pipelined = CursorWrapper.execute, CursorWrapper.executemany, DatabaseWrapper._pipelined

    def record(cursor_or_connection, sql, how="cursor"):
        with lock:
            seen.append((getattr(cursor_or_connection, "db", cursor_or_connection).alias, sql))
            seen.how.append(how)

    def counted_execute(self, sql, params=None):
        record(self, sql)
        return execute(self, sql, params)

    def counted_executemany(self, sql, param_list):
        record(self, sql)
        return executemany(self, sql, param_list)

    def counted_pipelined(self, before, sql, params, *, commit):
        record(self, sql, {(True, True): "alone", (True, False): "first", (False, True): "last"}[bool(before), commit])
        if before:
            seen.begun_with.append([command.split(" = ")[0] for command in before])
        return pipelined(self, before, sql, params, commit=commit)

    monkeypatch.setattr(CursorWrapper, "execute", counted_execute)
    monkeypatch.setattr(CursorWrapper, "executemany", counted_executemany)
    monkeypatch.setattr(DatabaseWrapper, "_pipelined", counted_pipelined)
    return seen


def test_a_metered_message_post_with_an_api_key_stays_within_its_query_budget(alice, queries):
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    assert client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "warm up"}, format="json").status_code == 201
    queries.clear()

    response = client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "hello budget"}, format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["message"]["content"] == "You said: hello budget"
    # Check-in housekeeping (RESET ALL per connection) depends on pool settings, not on the path;
    # under the pool it goes with each transaction's COMMIT, no round trip of its own
    # (config/db/backend; config/tests/test_pool_check.py).
    kept = [n for n, (_, sql) in enumerate(queries) if sql.strip() != "RESET ALL"]
    path, how = [queries[n] for n in kept], [queries.how[n] for n in kept]
    # 4 statements through a cursor, all on the app role (`default`):
    #   request:  the API key and its owner in one query (two SECURITY DEFINER functions);
    #             0 for a key the process remembers (API_KEY_CACHE, on when served; off in
    #             these in-process tests, whose transactions never commit: test_api_key_cache) =  1
    #   prepare:  the conversation FOR UPDATE with its persona, its organization's
    #             subscription + plan (for the entitlement check; the quota and rate decision
    #             is one Redis script) and its history (read again only when the lock waited
    #             for another send: chat/tests/test_send.py); the sequence UPDATE and the
    #             INSERT of both messages in one statement (a data-modifying WITH; the price
    #             comes from the process's catalog, read at most every CATALOG_SECONDS)    =  2
    #   finish:   the reply's UPDATE, its conversation's totals and the ledger's dedupe and
    #             INSERT from one VALUES row, in one statement (data-modifying WITHs, the
    #             ledger row written only if the reply was still streaming), RETURNING the
    #             sums for the Redis counters (no staging table or COPY for a single call),
    #             a transaction of its own sent with its BEGIN, context and COMMIT
    #             (rls.statement_alone, libpq's pipeline mode)                            =  1
    #   answer:   nothing: the conversation's totals are carried from the finish             =  0
    # PostgreSQL round trips, one a statement: the API key 1; the prepare's locking read with its
    # BEGIN and context (rls.first_statement_as), its insert with its COMMIT (insert_rows `last`)
    # 2; the finish with both 1 = 4 (6 before the prepare's two went in pipelines).
    statements = "\n".join(f"{alias}: {sql.strip()[:120]}" for alias, sql in path)
    assert len(path) == 4, statements
    assert {alias for alias, _ in path} == {"default"}, statements
    assert how == ["cursor", "first", "last", "alone"], statements
    # The prepare commits asynchronously (rls.ASYNCHRONOUS_COMMIT); the finish, the ledger row's, durably.
    assert queries.begun_with == [["BEGIN", "SET LOCAL app.user_id", "SET LOCAL synchronous_commit"], ["BEGIN", "SET LOCAL app.user_id"]], (
        queries.begun_with
    )


@pytest.mark.parametrize("plan, counted", [("free", True), ("enterprise", False)])
def test_a_new_conversations_first_send_counts_conversations_only_on_a_plan_that_limits_them(alice, plans, queries, plan, counted):
    put_on_plan(organization_of(alice), plans[plan])
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    queries.clear()
    assert client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "first"}, format="json").status_code == 201
    counts = [sql for _, sql in queries if sql.lstrip().upper().startswith("SELECT COUNT(*)")]  # the ORM's .count()
    assert bool(counts) is counted, counts


def test_a_new_conversation_past_the_plans_limit_is_refused_and_an_old_one_goes_on(alice, plans):
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    older = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    assert client.post(f"{API}/conversations/{older}/messages", {"content": "one"}, format="json").status_code == 201
    plans["free"].max_conversations = 1
    with rls.privileged(reason="test: lower the free plan's conversation limit"):
        plans["free"].save()
    newer = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    refused = client.post(f"{API}/conversations/{newer}/messages", {"content": "two"}, format="json")
    assert refused.status_code == 402 and "includes 1 conversations; you have 1" in refused.json()["message"], refused.json()
    assert client.post(f"{API}/conversations/{older}/messages", {"content": "three"}, format="json").status_code == 201


def test_a_metered_message_post_makes_three_redis_round_trips(alice, monkeypatch):
    """Each write to a Redis connection is one round trip (a pipeline is one write)."""
    from redis.connection import AbstractConnection

    client = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    assert client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "warm up"}, format="json").status_code == 201
    writes, real = [], AbstractConnection.send_packed_command

    def recorded(self, command, check_health=True):
        writes.append((b"".join(command) if isinstance(command, list) else command)[:160])
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", recorded)
    response = client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "hello budget"}, format="json")
    monkeypatch.undo()

    assert response.status_code == 201, response.json()
    # The API throttle: none, the warm-up's lease counted this request ahead (one script every
    # API_LEASE_MOST requests of a key: accounts/tests/test_throttles.py); the entitlement's
    # decision and reservation (one script), the live counters' increment with the
    # reservation's settlement (one pipeline, chat/tests/test_send.py), the API log row (RPUSH,
    # analytics/buffer.py; the test settings push each row, production one RPUSH a process per
    # API_LOG_BATCH_SECONDS: analytics/tests/test_buffer_batch.py)                           = 3
    assert len(writes) == 3, writes


def test_under_the_pool_a_metered_post_resets_its_connection_with_its_commits(alice):
    """Under the server's pool (one app-role connection, so every statement of the send is on one
    backend) the check-in sends no RESET ALL of its own: the backend's last statement is the reset
    sent with the finish's COMMIT (config/db/backend run_alone), marked as such. A check-in reset
    would come after it."""
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    headers = {"Authorization": f"Bearer {client.secret}"}
    with connections["default"].cursor() as cur:
        cur.execute("SELECT now()")  # the server's backends start after this; earlier tests' leftovers do not count
        [(before,)] = cur.fetchall()
    with served(workers=1, DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="1") as base, httpx.Client(base_url=base) as http:
        conversation_id = http.post(f"{API}/conversations", json={}, headers=headers).json()["id"]
        sent = http.post(f"{API}/conversations/{conversation_id}/messages", json={"content": "hello pool"}, headers=headers)
        assert sent.status_code == 201, sent.text
        with connections["default"].cursor() as cur:  # the app role: it may read its own sessions' statements
            cur.execute(
                "SELECT query FROM pg_stat_activity WHERE usename = current_user AND datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND backend_start > %s "
                "AND application_name <> %s",  # not the API key cache's listener
                [before, api_key_cache.APPLICATION_NAME],
            )
            last = [query for (query,) in cur.fetchall()]
    assert last == [f"{RESET_WITH_COMMIT_MARK} RESET ALL"], last


def test_a_metered_message_post_with_an_api_key_opens_one_transaction_through_django(alice, monkeypatch):
    """The prepare's, with its context; the finish goes alone (run_alone). The RLS middleware
    opens none for a view that opens its own when no session names a user: it used to open an
    empty one, a pool checkout and two autocommit switches for nothing (docs/performance.md)."""
    from django.db.transaction import Atomic

    client = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    assert client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "warm up"}, format="json").status_code == 201
    opened, enter = [], Atomic.__enter__  # after the warm-up: the price catalog is read then, privileged

    def counted_enter(self):
        if not connections[self.using or "default"].in_atomic_block:  # a transaction, not a savepoint
            opened.append(self.using)
        return enter(self)

    monkeypatch.setattr(Atomic, "__enter__", counted_enter)
    response = client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "one transaction"}, format="json")
    assert response.status_code == 201, response.json()
    assert len(opened) == 1, opened


def test_a_send_after_a_refused_one_on_the_pools_one_connection_is_answered(alice):
    """A refused send rolls back, and psycopg then deallocates the connection's prepared
    statements; the finish's statement (prepared by the backend, config/db/backend) went too, and
    the next send's finish on that pooled connection was a 500 ('prepared statement does not exist')."""
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    headers = {"Authorization": f"Bearer {client.secret}"}
    with served(workers=1, DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="1") as base, httpx.Client(base_url=base) as http:
        conversation_id = http.post(f"{API}/conversations", json={}, headers=headers).json()["id"]
        url = f"{API}/conversations/{conversation_id}/messages"
        assert http.post(url, json={"content": "one"}, headers=headers).status_code == 201
        refused = http.post(url, json={"content": "two", "provider": "openai", "model": "gpt-7"}, headers=headers)
        assert refused.status_code == 400, refused.text
        sent = http.post(url, json={"content": "three"}, headers=headers)
        assert sent.status_code == 201, sent.text
        assert sent.json()["message"]["content"] == "You said: three"
