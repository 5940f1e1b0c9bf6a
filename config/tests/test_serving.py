"""Serving under ASGI (issue #10): gunicorn + uvicorn workers, as `make run` and production
run it, started as a real server against the test database (config/tests/serving.py)."""

import asyncio
import time
import uuid

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from psycopg_pool import ConnectionPool

from accounts.services import api_key_create, api_key_revoke
from accounts.tests.factories import make_user
from billing.tests.factories import make_plans
from chat.models import Message
from chat.tests.factories import make_catalog
from config.db import rls
from config.db.rows import direct_connection_params
from config.tests.serving import served

STREAMS, EVENTS, INTERVAL = 20, 24, 0.25  # each stream stays open for ~6 s


def _chat_key_headers() -> dict:
    """A new user's API key with the chat scopes, as request headers. A transactional test's flush
    removed the seeded catalog and plans, so they are seeded first."""
    make_catalog()
    make_plans()
    user = make_user()
    with rls.privileged(reason="test: issue an API key"):
        _key, secret = api_key_create(user=user, name="k", scopes=["chat:read", "chat:write"])
    return {"Authorization": f"Bearer {secret}"}


async def _streams_and_a_plain_request(base: str) -> dict:
    first_events, finished = 0, 0
    all_open = asyncio.Event()
    limits = httpx.Limits(max_connections=STREAMS + 1)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one_stream() -> int:
            nonlocal first_events, finished
            events = 0
            async with client.stream("GET", f"/_serving/stream?events={EVENTS}&interval={INTERVAL}") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith('data: {"n"'):
                        events += 1
                        if events == 1:
                            first_events += 1
                            if first_events == STREAMS:
                                all_open.set()
            finished += 1
            return events

        tasks = [asyncio.create_task(one_stream()) for _ in range(STREAMS)]
        await asyncio.wait_for(all_open.wait(), timeout=30)
        t = time.perf_counter()
        live = await client.get("/health/live")
        live_seconds = time.perf_counter() - t
        finished_at_live = finished
        events = await asyncio.gather(*tasks)
    return {"live": live, "live_seconds": live_seconds, "finished_at_live": finished_at_live, "events": events}


@pytest.mark.django_db
def test_a_plain_request_answers_while_20_streams_hold_one_worker():
    with served(workers=1) as base:
        result = asyncio.run(_streams_and_a_plain_request(base))
        static = httpx.get(f"{base}/static/css/app.css")
    assert result["live"].status_code == 200 and result["live"].json() == {"status": "ok"}
    assert result["finished_at_live"] == 0  # every stream was still open when /health/live answered
    assert result["live_seconds"] < 2.0  # a sync worker would answer only after the streams (~6 s)
    assert result["events"] == [EVENTS] * STREAMS
    # Static files: whitenoise serves them under ASGI too.
    assert static.status_code == 200 and static.headers["content-type"].startswith("text/css")


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_carries_no_context_into_the_next_request():
    alice, bob = make_user(), make_user()
    with rls.privileged(reason="test: issue API keys"):
        alice_key, alice_secret = api_key_create(user=alice, name="alice", scopes=["account:read"])
        bob_key, bob_secret = api_key_create(user=bob, name="bob", scopes=["account:read"])
    # One worker, one connection per alias: every request below runs on the same backend.
    with served(workers=1, DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="1") as base, httpx.Client(base_url=base) as client:
        leaked = client.get("/_serving/context/session-set", params={"user_id": str(alice.pk)}).json()
        assert leaked["user_id"] == str(alice.pk)
        after_leak = client.get("/_serving/context").json()
        as_alice = client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {alice_secret}"})
        as_bob = client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {bob_secret}"})
        after_bob = client.get("/_serving/context").json()
    assert after_leak["pid"] == leaked["pid"] == after_bob["pid"]  # the pooled connection was reused
    assert after_leak["user_id"] == ""  # even a session-level setting is gone (RESET ALL on check-in)
    assert after_bob["user_id"] == ""  # and bob's transaction-local context ended with his request
    assert as_alice.status_code == as_bob.status_code == 200
    assert [k["id"] for k in as_alice.json()["results"]] == [str(alice_key.pk)]
    assert [k["id"] for k in as_bob.json()["results"]] == [str(bob_key.pk)]


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_stops_working_on_every_worker_that_remembered_it():
    alice = make_user()
    with rls.privileged(reason="test: issue an API key"):
        key, secret = api_key_create(user=alice, name="k", scopes=["account:read"])
    headers = {"Authorization": f"Bearer {secret}"}
    with served(workers=2) as base:

        def statuses(n: int) -> set[int]:  # a new connection each, so both workers answer some
            return {httpx.get(f"{base}/api/v1/me", headers=headers).status_code for _ in range(n)}

        assert statuses(30) == {200}  # both workers remember the key now (accounts/api_key_cache.py)
        with rls.privileged(reason="test: revoke"):
            api_key_revoke(user=alice, api_key=key)
        deadline = time.monotonic() + 10
        while statuses(1) != {401}:
            assert time.monotonic() < deadline, "the revoked key still worked 10 s later"
        assert statuses(30) == {401}


@pytest.mark.django_db
def test_the_pool_reset_hook_clears_session_settings_on_check_in():
    params = direct_connection_params("default")  # the app role on the test database
    with ConnectionPool(
        kwargs={**params, "autocommit": True}, min_size=1, max_size=1, reset=settings.DATABASE_POOL_OPTIONS["reset"]
    ) as pool:
        with pool.connection() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            conn.execute("SELECT set_config('app.user_id', %s, false)", [str(uuid.uuid4())])
        with pool.connection() as conn:
            assert conn.execute("SELECT pg_backend_pid(), current_setting('app.user_id', true)").fetchone() == (pid, "")


@pytest.mark.django_db(transaction=True)
def test_an_open_reply_stream_holds_no_database_connection_while_the_provider_answers():
    """One worker with one pooled connection: while a reply streams (echo, a word every 0.3 s),
    another request that needs the database answers at once, so the stream holds none."""
    headers = _chat_key_headers()
    words = " ".join(f"word{n}" for n in range(20))  # ~6 s of streaming

    async def run(base: str) -> dict:
        async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
            conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
            first_delta = asyncio.Event()

            async def stream() -> list[str]:
                lines = []
                async with client.stream(
                    "POST", f"/api/v1/conversations/{conversation}/messages?stream=true", json={"content": words}
                ) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            lines.append(line)
                            first_delta.set()
                return lines

            task = asyncio.create_task(stream())
            await asyncio.wait_for(first_delta.wait(), timeout=30)
            t = time.perf_counter()
            listing = await client.get("/api/v1/conversations")
            seconds = time.perf_counter() - t
            still_streaming = not task.done()
            lines = await task
        return {"listing": listing, "seconds": seconds, "still_streaming": still_streaming, "lines": lines}

    env = {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "1", "DATABASE_POOL_TIMEOUT": "5", "CHAT_ECHO_DELAY": "0.3"}
    with served(workers=1, **env) as base:
        result = asyncio.run(run(base))
    assert result["listing"].status_code == 200 and result["still_streaming"]
    assert result["seconds"] < 2.0  # waiting for the stream's connection would take the pool timeout (5 s), then 500
    assert '"type": "done"' in result["lines"][-1] and '"status": "complete"' in result["lines"][-1]


def _reply_streaming(conversation_id: str) -> bool:
    try:
        with rls.privileged(reason="test: is the reply being written"):
            return Message.objects.filter(conversation_id=conversation_id, role="assistant", status="streaming").exists()
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_a_send_waiting_for_its_whole_reply_holds_no_database_connection_while_the_provider_answers():
    """The same for a plain (non-streaming) send: while the provider answers (echo waits 6 s), the
    request's thread holds no pooled connection, so with one connection per worker another
    request answers at once instead of waiting out the pool (5 s) and failing."""
    headers = _chat_key_headers()

    async def run(base: str) -> dict:
        async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
            conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
            send = asyncio.create_task(client.post(f"/api/v1/conversations/{conversation}/messages", json={"content": "hello"}))
            # The send is waiting on the provider once its reply row is stored `streaming` (read here, not
            # through the server, whose one connection is what is being tested).
            for _ in range(500):
                if await sync_to_async(_reply_streaming, thread_sensitive=False)(conversation):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the send never reached the provider")
            other = await client.get("/api/v1/conversations")
            still_waiting = not send.done()
            reply = await send
        return {"other": other, "still_waiting": still_waiting, "reply": reply}

    # A plain echo reply waits CHAT_ECHO_DELAY once: longer than the pool timeout, so a request
    # waiting for the send's connection would fail, not merely answer late.
    env = {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "1", "DATABASE_POOL_TIMEOUT": "5", "CHAT_ECHO_DELAY": "6"}
    with served(workers=1, **env) as base:
        result = asyncio.run(run(base))
    assert result["other"].status_code == 200 and result["still_waiting"]
    assert result["reply"].status_code == 201 and result["reply"].json()["message"]["status"] == "complete"


def _reply_and_ledger(conversation_id: str) -> tuple[Message | None, list]:
    from analytics.models import TokenUsage

    try:
        with rls.privileged(reason="test: the reply and its ledger rows"):
            reply = Message.objects.filter(conversation_id=conversation_id, role="assistant").first()
            rows = list(TokenUsage.objects.filter(message_id=reply.pk)) if reply else []
            return reply, rows
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_a_client_gone_mid_stream_leaves_its_reply_interrupted_metered_once_and_its_connection_returned():
    """Through the real server (the handler of config/asgi.py): the client reads a few words of a
    streamed reply and hangs up. The handler cancels the response; the stream's shielded ending
    stores what was produced `interrupted` and meters it once, and the connection goes back to
    the pool: with one pooled connection, the next request answers at once."""
    headers = _chat_key_headers()
    words = " ".join(f"word{n}" for n in range(30))  # ~6 s of streaming at 0.2 s a word

    async def run(base: str) -> dict:
        async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
            conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
            deltas = 0
            async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as leaving:
                async with leaving.stream(
                    "POST", f"/api/v1/conversations/{conversation}/messages?stream=true", json={"content": words}
                ) as r:
                    async for line in r.aiter_lines():
                        deltas += line.startswith('data: {"type": "delta"')
                        if deltas == 3:
                            break  # closing the client drops the connection mid-stream
            for _ in range(250):
                reply, rows = await sync_to_async(_reply_and_ledger, thread_sensitive=False)(conversation)
                if reply is not None and reply.status != "streaming" and rows:
                    break
                await asyncio.sleep(0.02)
            t = time.perf_counter()
            after = await client.get("/api/v1/conversations")
            seconds = time.perf_counter() - t
        return {"reply": reply, "rows": rows, "after": after, "seconds": seconds}

    env = {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "1", "DATABASE_POOL_TIMEOUT": "5", "CHAT_ECHO_DELAY": "0.2"}
    with served(workers=1, **env) as base:
        result = asyncio.run(run(base))
    reply, rows = result["reply"], result["rows"]
    assert reply.status == "interrupted" and reply.content.startswith("You said:") and len(reply.content.split()) < 30
    assert len(rows) == 1 and rows[0].output_tokens == reply.output_tokens > 0
    assert result["after"].status_code == 200 and result["seconds"] < 2.0  # not the pool timeout (5 s), then 500
