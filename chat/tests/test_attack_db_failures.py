"""Attack probes: failures in the middle of the custom database layer (config/db: the pooled
connections' checkout and check-in, the libpq pipelines run_first / run_last / run_alone, the
prepared statements of rows.prepared_cursor) and the send path that uses it (chat/services.py).

Each test here failed on the code it was written against."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connections

from accounts.tests.test_api import key_client
from analytics.models import TokenUsage
from chat import services
from chat.models import Message
from config.db import rls
from config.db.backend.base import DatabaseWrapper
from config.db.rls import pool_connection_reset
from config.db.rows import direct_connection_params

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"


@pytest.fixture
def pooled_default():
    """The app alias itself ("default") served from a pool of one with the app's own reset, as
    under the server (the in-process tests run without the pool): every statement the services
    and the API send on the app role goes through this one pooled connection."""
    original = connections["default"]
    settings = original.settings_dict
    options = {**settings["OPTIONS"], "pool": {"min_size": 1, "max_size": 1, "timeout": 5, "reset": pool_connection_reset}}
    wrapper = DatabaseWrapper({**settings, "OPTIONS": options, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": True}, alias="default")
    wrapper.pool.open(wait=True)
    connections["default"] = wrapper
    try:
        yield wrapper
    finally:
        try:
            wrapper.close()
        finally:
            wrapper.close_pool()
            DatabaseWrapper._connection_pools.pop("default", None)
            connections["default"] = original


def _pid(wrapper) -> int:
    wrapper.ensure_connection()
    return wrapper.connection.info.backend_pid


def _kill(pid: int) -> None:
    """End a backend as a restart, a failover or an operator's pg_terminate_backend would, from a
    connection of the app role of its own (not the pool's), and wait until it is gone."""
    with psycopg.connect(**direct_connection_params("default"), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(100):
            if not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError(f"backend {pid} is still there")


def _api(user):
    client = key_client(user, scopes=["chat:read", "chat:write"])
    client.raise_request_exception = False  # a 500 is answered, as under the server
    return client


def _sent_once(user, pooled):
    """An API client of `user`, a conversation with one send through the pooled connection (its
    statements prepared), that connection's backend pid; the connection back in the pool."""
    client = _api(user)
    conversation = services.conversation_create(user=user, title="kept")
    url = f"{API}/conversations/{conversation.pk}/messages"
    assert client.post(url, {"content": "warm up"}, format="json").status_code == 201
    pid = _pid(pooled)
    pooled.close()
    return client, conversation, url, pid


def test_a_finish_on_a_pooled_connection_killed_moments_after_its_check_in_loses_the_paid_reply(pooled_default, alice, monkeypatch):
    """A metered send: the prepare commits and gives its connection back to the pool
    (rls.connection_release), the provider answers (paid), then the finish checks a connection
    out again (rls.statement_alone -> run_alone). Here the server ends that pooled connection's
    backend while it sits in the pool, during the provider call, as a PostgreSQL restart or
    failover, or an operator's pg_terminate_backend does to every connection of a busy pool.

    Was: config/db/backend check_unless_recent hands out a connection checked in under a second
    ago without any check, so the finish's one round trip fails on the dead socket: the API answers
    500 after the provider was paid, the reply's text is lost, the reply stays `streaming` with no
    ledger row (the stale pass later meters it from the prompt estimate, not the tokens the
    provider reported), and the reservation is held until it expires.

    Should: a dead pooled connection is not handed to the finish (or the finish, which is
    idempotent by its request id and its `status = streaming` guard, is retried once on a fresh
    connection): the send answers 201 with the reply stored `complete` and metered exactly once."""
    client, conversation, url, pid = _sent_once(alice, pooled_default)

    from chat.providers import echo

    answer = echo.complete

    async def answered_while_the_pool_lost_its_connection(request, **kwargs):
        _kill(pid)  # the prepare's connection, in the pool again since a moment ago
        return await answer(request, **kwargs)

    monkeypatch.setattr(echo, "complete", answered_while_the_pool_lost_its_connection)
    response = client.post(url, {"content": "the paid one"}, format="json")
    monkeypatch.undo()
    with rls.privileged(reason="test: read the send back"):
        replies = list(Message.objects.filter(conversation_id=conversation.pk, role="assistant").order_by("sequence"))
        ledger = TokenUsage.objects.filter(conversation_id=conversation.pk).count()
    assert (response.status_code, [r.status for r in replies], ledger) == (201, ["complete", "complete"], 2), response.content[:300]


def test_a_prepared_statement_a_schema_change_made_stale_fails_every_api_key_send_on_that_connection(pooled_default, alice):
    """An API key's send (a view with its own transactions: the request holds none) reads the key
    and its owner with a prepared statement (accounts api_key_authenticate, rows.prepared_cursor)
    in autocommit. Then a migration changes the type of a column that statement reads (here
    accounts_user.display_name varchar(150) -> text, a CharField made a TextField) while the
    process serves.

    Was: the statement prepared before the change fails on that pooled connection ("attribute 8 of
    type record has wrong type"), and, since nothing rolls back in autocommit, psycopg keeps it
    prepared: every API-key send on that connection is a 500, for as long as no other request
    happens to roll a transaction back on it (a GET in the middleware's transaction did, here).
    The backend's own pipelines prepare a failed statement afresh (test_run_alone.py: "one a
    schema change made stale would otherwise fail on that connection for good");
    prepared_cursor does not.

    Should: at most the first send after the change fails; the failed prepared statement is
    dropped from psycopg's cache and prepared afresh, so the next send on that connection works."""
    client, _conversation, url, pid = _sent_once(alice, pooled_default)
    with connections["owner"].cursor() as cur:
        cur.execute("ALTER TABLE accounts_user ALTER COLUMN display_name TYPE text")
    try:
        codes = [client.post(url, {"content": f"after it, {n}"}, format="json").status_code for n in range(4)]
        assert _pid(pooled_default) == pid  # the same pooled connection all along
        pooled_default.close()
        assert codes[1:] == [201, 201, 201], codes
    finally:
        pooled_default.close()
        with connections["owner"].cursor() as cur:
            cur.execute("ALTER TABLE accounts_user ALTER COLUMN display_name TYPE varchar(150)")
