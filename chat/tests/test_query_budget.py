"""The metered message path's query budget (issue #10: 150 requests/s per core leaves about
6.7 ms of one core for everything): a regression that adds a query shows here.

The send runs on a thread of its own (chat.api._send_in_own_transactions), so the queries are
counted at the cursor, from every thread and database alias, not per connection."""

import threading

import pytest
from django.db.backends.utils import CursorWrapper

from accounts.tests.test_api import key_client
from chat.tests.test_api import API

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queries(monkeypatch):
    """Every statement any thread runs through Django, as (alias, sql), while the test runs."""
    seen, lock = [], threading.Lock()
    execute, executemany = CursorWrapper.execute, CursorWrapper.executemany

    def record(cursor, sql):
        with lock:
            seen.append((cursor.db.alias, sql))

    def counted_execute(self, sql, params=None):
        record(self, sql)
        return execute(self, sql, params)

    def counted_executemany(self, sql, param_list):
        record(self, sql)
        return executemany(self, sql, param_list)

    monkeypatch.setattr(CursorWrapper, "execute", counted_execute)
    monkeypatch.setattr(CursorWrapper, "executemany", counted_executemany)
    return seen


def test_a_metered_message_post_with_an_api_key_stays_within_its_query_budget(alice, queries):
    client = key_client(alice, scopes=["chat:read", "chat:write"])
    conversation_id = client.post(f"{API}/conversations", {}, format="json").json()["id"]
    assert client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "warm up"}, format="json").status_code == 201
    queries.clear()

    response = client.post(f"{API}/conversations/{conversation_id}/messages", {"content": "hello budget"}, format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["message"]["content"] == "You said: hello budget"
    # Check-in housekeeping (RESET ALL per connection) depends on pool settings, not on the path.
    path = [(alias, sql) for alias, sql in queries if sql.strip() != "RESET ALL"]
    # 4 statements through a cursor, all on the app role (`default`):
    #   request:  the API key and its owner in one query (two SECURITY DEFINER functions)     =  1
    #   prepare:  the conversation FOR UPDATE with its persona, its organization's
    #             subscription + plan (for the entitlement check; the quota and rate decision
    #             is one Redis script) and its history (read again only when the lock waited
    #             for another send: chat/tests/test_send.py); the sequence UPDATE and the
    #             INSERT of both messages in one statement (a data-modifying WITH; the price
    #             comes from the process's catalog, read at most every CATALOG_SECONDS)    =  2
    #   finish:   the reply's UPDATE, its conversation's totals and the ledger's dedupe and
    #             INSERT from one VALUES row, in one statement (data-modifying WITHs, the
    #             ledger row written only if the reply was still streaming), RETURNING the
    #             sums for the Redis counters (no staging table or COPY for a single call)  =  1
    #   answer:   nothing: the conversation's totals are carried from the finish             =  0
    # Each transaction's RLS context goes with its BEGIN in one round trip, not through a
    # cursor (rls._begun_with_context; config/tests/test_rls.py checks it): 2 more statements,
    # no more round trips.
    statements = "\n".join(f"{alias}: {sql.strip()[:120]}" for alias, sql in path)
    assert len(path) == 4, statements
    assert {alias for alias, _ in path} == {"default"}, statements


def test_a_metered_message_post_makes_four_redis_round_trips(alice, monkeypatch):
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
    # The API throttle's window (one script), the entitlement's decision and reservation (one
    # script), the live counters' increment with the reservation's settlement (one pipeline,
    # chat/tests/test_send.py), the API log row (RPUSH, analytics/buffer.py)                 = 4
    assert len(writes) == 4, writes
