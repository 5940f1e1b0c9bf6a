"""Attack probes, second round, on streams and the gateway: every stream ends stored and metered
once, and leaves no `streaming` reply (and no reservation) behind, whenever its client goes."""

import asyncio
import json
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.test import Client

from accounts.services import api_key_create
from accounts.tests.factories import make_user
from analytics.models import TokenUsage
from billing.models import Plan
from billing.tests.factories import make_plans, organization_of, put_on_plan
from chat import gateway, response_cache, services
from chat.models import Message, PendingCall
from chat.tests.factories import make_catalog
from config.asgi import OneHopASGIHandler
from config.db import rls
from config.tests.asgi_scope import http_scope

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key():
    make_catalog()
    plans = make_plans()
    user = make_user(email="alice@example.com")
    with rls.privileged(reason="test: issue an API key"):
        secret = api_key_create(user=user, name="gateway", scopes=["chat:read", "chat:write"])[1]
    return user, secret, plans


def _post(secret: str, body: dict, **headers):
    client = Client(raise_request_exception=False)
    return client.post(
        "/v1/chat/completions", json.dumps(body).encode(), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}", **headers
    )


def _streaming_replies():
    with rls.privileged(reason="test"):
        return list(Message.objects.filter(status=Message.Status.STREAMING)) + list(PendingCall.objects.all())


def _wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


# --- 1. A client gone before the stream's first event ---------------------------------------


class _Handler(OneHopASGIHandler):
    """The app's handler, telling the test when the request's sync part (the view) has ended."""

    def __init__(self, view_done: threading.Event):
        super().__init__()
        self.view_done = view_done

    def _response_in_thread(self, scope, body_file, made):
        try:
            return super()._response_in_thread(scope, body_file, made)
        finally:
            self.view_done.set()


def _requests_stream(monkeypatch) -> None:
    """This module's requests ask for the reply as a stream (`?stream=true`)."""
    real_scope = http_scope

    def scope_with_stream(method, p, h=()):
        scope = real_scope(method, p, h)
        scope["query_string"] = b"stream=true"
        return scope

    monkeypatch.setattr(f"{__name__}.http_scope", scope_with_stream)


def _body_then_disconnect(body: bytes, gone: asyncio.Event):
    """An ASGI receive: the whole body, then a disconnect once `gone` is set."""
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


def _disconnect_while_the_view_prepares(monkeypatch, path: str, body: bytes, headers: list) -> list[dict]:
    """POST through the app's ASGI handler; the client goes away while the view is in
    message_prepare (after it stored the send and reserved its most). Returns what was sent."""
    real = services.message_prepare
    view_done = threading.Event()
    release = threading.Event()
    sent: list[dict] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        prepared = asyncio.Event()

        def prepare_then_wait(**kwargs):
            pending = real(**kwargs)
            loop.call_soon_threadsafe(prepared.set)
            release.wait(10)  # until the handler has seen the client go
            return pending

        monkeypatch.setattr(services, "message_prepare", prepare_then_wait)
        receive = _body_then_disconnect(body, prepared)

        async def send(message):
            sent.append(message)

        scope = http_scope("POST", path, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers])
        await _Handler(view_done)(scope, receive, send)  # returns once it has seen the disconnect
        release.set()
        await loop.run_in_executor(None, view_done.wait, 10)  # the view ran on to its end

    async_to_sync(scenario)()
    monkeypatch.setattr(services, "message_prepare", real)
    assert view_done.is_set()
    return sent


@pytest.mark.parametrize("store", [True, False])
def test_a_gateway_stream_whose_client_goes_before_the_first_event_leaves_nothing_streaming_or_reserved(key, monkeypatch, store):
    user, secret, plans = key
    # Room for one call's most (prompt + max_tokens), not two: a reservation left behind shows.
    plans["free"].monthly_tokens = 80
    with rls.privileged(reason="test"):
        plans["free"].save()
    ask = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    if store:
        headers.append((b"x-confab-store", b"true"))
    sent = _disconnect_while_the_view_prepares(monkeypatch, "/v1/chat/completions", json.dumps({**ask, "stream": True}).encode(), headers)
    assert not [m for m in sent if m["type"] == "http.response.body" and m.get("body")]  # the client saw no event

    # The provider was never asked: nothing may stay `streaming` (or a PendingCall) until the
    # stale pass, minutes later, meters a call that never happened; the reservation goes back.
    closed = _wait_until(lambda: not _streaming_replies(), 5)
    again = _post(secret, ask)  # the same call, which the month has room for once nothing is held
    assert closed and again.status_code == 200, (_streaming_replies(), again.status_code, again.content[:300])
    with rls.privileged(reason="test"):
        for message in Message.objects.filter(role="assistant"):
            rows = list(TokenUsage.objects.filter(request_id=message.metadata["request_id"]))
            assert sum(r.input_tokens + r.output_tokens for r in rows) == message.input_tokens + message.output_tokens


def test_an_api_stream_whose_client_goes_before_the_first_event_leaves_nothing_streaming(key, monkeypatch):
    user, secret, plans = key
    conversation = services.conversation_create(user=user)
    path = f"/api/v1/conversations/{conversation.pk}/messages"
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    scope_path = path  # the query string is set below
    _requests_stream(monkeypatch)
    _disconnect_while_the_view_prepares(monkeypatch, scope_path, json.dumps({"content": "hi"}).encode(), headers)
    assert _wait_until(lambda: not _streaming_replies(), 5), _streaming_replies()


# --- 2. A client gone while a streamed reply is looked up in the response cache --------------


@pytest.fixture
def cached(key):
    user, secret, plans = key
    with rls.privileged(reason="test: a plan with the response cache"):
        Plan.objects.filter(pk=plans["pro"].pk).update(response_cache=True)
    put_on_plan(organization_of(user), Plan.objects.get(pk=plans["pro"].pk))
    return user


def test_a_stream_cancelled_while_its_cache_hit_is_read_is_closed_and_metered_once(cached, monkeypatch):
    user = cached
    ask = {"user": user, "content": "cache me please", "provider": "echo", "model": "echo-1", "response_cache": "any"}
    first = services.message_send(**ask)  # the entry
    assert first.message.status == "complete"
    pending = services.message_prepare(**ask)
    assert pending.cache_key
    real_get = response_cache.cached_reply_get
    entered, go = threading.Event(), threading.Event()

    def slow_get(key):
        entered.set()
        go.wait(10)  # Redis answering slowly, or the request's thread busy
        return real_get(key)

    monkeypatch.setattr(response_cache, "cached_reply_get", slow_get)

    async def run():
        loop = asyncio.get_running_loop()
        seen = []

        async def read():
            async for chunk in gateway._chunks(pending, include_usage=False):
                seen.append(chunk)

        reader = asyncio.ensure_future(read())
        await loop.run_in_executor(None, entered.wait, 10)
        reader.cancel()  # the client goes away while the entry is read
        with pytest.raises(asyncio.CancelledError):
            await reader
        go.set()
        await services.stream_endings_wait()
        return seen

    async_to_sync(run)()
    with rls.privileged(reason="test"):
        message = Message.objects.get(pk=pending.message.pk)
        rows = list(TokenUsage.objects.filter(request_id=pending.request_id))
    assert message.status != "streaming" and len(rows) == 1, (message.status, len(rows))


# --- 3. A live stream older than the stale pass's age ---------------------------------------


@pytest.mark.parametrize("store", [True, False])
def test_a_live_stream_past_the_stale_age_is_metered_for_what_it_delivered(key, store):
    """A slow reader keeps a stream open past CHAT_STREAM_STALE_MINUTES (the client sets the pace:
    the provider's reply waits in the socket's buffer). The stale pass, which is for replies
    whose worker died, closed the live reply from what was stored (no text yet: 0 output), and
    the real finish was dropped: the whole reply reached the client, metered as no output."""
    user, secret, plans = key
    words = " ".join(f"w{n}" for n in range(20))
    pending = services.message_prepare(
        user=user, content=words, provider="echo", model="echo-1", supplied=services.SuppliedHistory(store=store)
    )

    async def run():
        chunks = gateway._chunks(pending, include_usage=True)
        received = [await chunks.__anext__(), await chunks.__anext__(), await chunks.__anext__()]  # role, 2 deltas

        # 16 minutes pass with the client reading slowly; the beat runs the stale pass.
        def sixteen_minutes_later():
            old = services.timezone.now() - services.timezone.timedelta(minutes=16)
            with rls.privileged(reason="test: the stream has been open 16 minutes"):
                Message.objects.filter(pk=pending.message.pk).update(created_at=old)
                PendingCall.objects.filter(request_id=pending.request_id).update(created_at=old)
            closed = services.streams_close_stale()
            connections.close_all()
            return closed

        # Alive (its worker marks it while it runs): the stale pass leaves it to its own end.
        assert await asyncio.get_running_loop().run_in_executor(None, sixteen_minutes_later) == 0
        received += [chunk async for chunk in chunks]
        await services.stream_endings_wait()
        return received

    received = async_to_sync(run)()
    events = [json.loads(c.removeprefix("data: ")) for c in received if c.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text == f"You said: {words}"  # the client got the whole reply
    with rls.privileged(reason="test"):
        [row] = TokenUsage.objects.filter(request_id=pending.request_id)
    assert row.output_tokens == len(text.split()), (row.output_tokens, row.error)  # 22 words delivered
    if store:
        with rls.privileged(reason="test"):
            message = Message.objects.get(pk=pending.message.pk)
        assert message.content == text and message.output_tokens == row.output_tokens


# --- 4. Many messages in one stored request ----------------------------------------------------


def test_a_stored_call_with_thousands_of_short_messages_is_not_a_500(key):
    user, secret, plans = key
    messages = [{"role": "user", "content": "a"} for _ in range(4000)]  # ~140 kB, well within the body limit
    response = _post(secret, {"model": "echo-1", "messages": messages}, HTTP_X_CONFAB_STORE="true")
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    assert "error" not in response.json() or response.json()["error"]["type"] == "invalid_request_error"


# --- 5. The per-minute rate under concurrent gateway calls --------------------------------------


def test_concurrent_gateway_calls_never_pass_the_per_minute_rate(key):
    user, secret, plans = key
    plans["free"].requests_per_minute = 3
    with rls.privileged(reason="test"):
        plans["free"].save()
    barrier = threading.Barrier(8)
    statuses = []

    def call():
        barrier.wait()
        statuses.append(_post(secret, {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 3 + [429] * 5, statuses
    with rls.privileged(reason="test"):
        assert TokenUsage.objects.count() == 3


# --- 6. Inputs ------------------------------------------------------------------------------------


RAW = {
    "text/plain": (b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}', "text/plain"),
    "form": (b"model=echo-1", "application/x-www-form-urlencoded"),
    "multipart without boundary": (b"--x\r\n", "multipart/form-data"),
    "json with a bad charset": (b'{"model": "echo-1"}', "application/json; charset=utf-16"),
    "json with a BOM": (b'\xef\xbb\xbf{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}', "application/json"),
    "invalid utf-8": (b'{"model": "echo-1", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json"),
    "empty": (b"", "application/json"),
    "null": (b"null", "application/json"),
    "a string": (b'"hi"', "application/json"),
    "messages of strings": (b'{"model": "echo-1", "messages": ["hi"]}', "application/json"),
    "content a number": (b'{"model": "echo-1", "messages": [{"role": "user", "content": 5}]}', "application/json"),
    "part text a list": (
        b'{"model": "echo-1", "messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]}',
        "application/json",
    ),
    "parts not dicts": (b'{"model": "echo-1", "messages": [{"role": "user", "content": [["text"]]}]}', "application/json"),
    "file part": (
        b'{"model": "echo-1", "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "x"}}]}]}',
        "application/json",
    ),
    "model a list": (b'{"model": ["echo-1"], "messages": [{"role": "user", "content": "hi"}]}', "application/json"),
    "max_tokens a string": (b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}', "application/json"),
    "stream a string": (b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "stream": "true"}', "application/json"),
    "whitespace only": (b'{"model": "echo-1", "messages": [{"role": "user", "content": "   "}]}', "application/json"),
    "max_tokens of 5,000 digits": (
        b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 5000 + b"}",
        "application/json",
    ),
    "unknown field of 5,000 digits": (
        b'{"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 5000 + b"}",
        "application/json",
    ),
    "duplicate keys": (b'{"model": "echo-1", "model": ["x"], "messages": [{"role": "user", "content": "hi"}]}', "application/json"),
    "NUL in a system message": (
        b'{"model": "echo-1", "messages": [{"role": "system", "content": "a\\u0000"}, {"role": "user", "content": "hi"}]}',
        "application/json",
    ),
}


@pytest.mark.parametrize("name", list(RAW))
def test_odd_bodies_are_4xx_in_openais_shape_and_meter_nothing(key, name):
    user, secret, plans = key
    raw, content_type = RAW[name]
    for headers in ({}, {"HTTP_X_CONFAB_STORE": "true"}):
        client = Client(raise_request_exception=False)
        response = client.post("/v1/chat/completions", raw, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {secret}", **headers)
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with rls.privileged(reason="test"):
        assert not TokenUsage.objects.exists() and not Message.objects.exists()


# --- 7. A slow reader that goes away while its bytes wait to be sent -------------------------------


def _slow_reader_goes(path: str, body: bytes, headers: list, block_at: int) -> list[bytes]:
    """Through the app's ASGI handler: the client stops reading at body chunk `block_at` (the
    server's send waits, as uvicorn's does on a full socket buffer), then disconnects."""
    chunks: list[bytes] = []

    async def scenario():
        blocked = asyncio.Event()
        receive = _body_then_disconnect(body, blocked)

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) == block_at:
                    blocked.set()
                    await asyncio.Event().wait()  # drain() on a reader that never reads again

        scope = http_scope("POST", path, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers])
        await OneHopASGIHandler()(scope, receive, send)
        await services.stream_endings_wait()

    async_to_sync(scenario)()
    return chunks


@pytest.mark.parametrize("block_at", [1, 2, 3])
def test_a_slow_reader_gone_while_the_server_waits_to_send_leaves_its_reply_closed_and_metered_once(key, settings, block_at):
    user, secret, plans = key
    settings.CHAT_ECHO_DELAY = 0
    ask = {"model": "echo-1", "messages": [{"role": "user", "content": "one two three four five six"}], "stream": True}
    headers = [(b"authorization", f"Bearer {secret}".encode()), (b"x-confab-store", b"true")]
    chunks = _slow_reader_goes("/v1/chat/completions", json.dumps(ask).encode(), headers, block_at)
    assert len(chunks) == block_at
    closed = _wait_until(lambda: not _streaming_replies(), 5)
    with rls.privileged(reason="test"):
        [message] = Message.objects.filter(role="assistant")
        rows = list(TokenUsage.objects.filter(request_id=message.metadata["request_id"]))
    assert closed and message.status != "streaming" and len(rows) == 1, (message.status, len(rows))
    assert rows[0].output_tokens == message.output_tokens


@pytest.mark.parametrize("block_at", [1, 2])
def test_a_slow_reader_gone_from_an_api_stream_leaves_its_reply_closed_and_metered_once(key, settings, monkeypatch, block_at):
    user, secret, plans = key
    settings.CHAT_ECHO_DELAY = 0
    conversation = services.conversation_create(user=user)
    _requests_stream(monkeypatch)
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    body = json.dumps({"content": "one two three four five six"}).encode()
    chunks = _slow_reader_goes(f"/api/v1/conversations/{conversation.pk}/messages", body, headers, block_at)
    assert len(chunks) == block_at
    closed = _wait_until(lambda: not _streaming_replies(), 5)
    with rls.privileged(reason="test"):
        [message] = Message.objects.filter(role="assistant")
        rows = list(TokenUsage.objects.filter(request_id=message.metadata["request_id"]))
    assert closed and message.status != "streaming" and len(rows) == 1, (message.status, len(rows))


@pytest.mark.parametrize("path", ["gateway", "api"])
def test_a_slow_reader_gone_has_its_reply_closed_at_once_not_when_the_garbage_collector_runs(key, settings, monkeypatch, path):
    """As above, with the garbage collector off and the reply checked while the server's loop
    still runs. Was: Django closes only its own wrapper of the body; the reply's stream stayed
    suspended, `streaming`, marked alive and reserved, until a collection found the cycle (the
    tests above passed only because their loop ended). Should: closed when the handler is done."""
    import gc

    user, secret, plans = key
    settings.CHAT_ECHO_DELAY = 0
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    if path == "gateway":
        url, headers = "/v1/chat/completions", [*headers, (b"x-confab-store", b"true")]
        body = {"model": "echo-1", "messages": [{"role": "user", "content": "one two three four five six"}], "stream": True}
    else:
        url, body = f"/api/v1/conversations/{services.conversation_create(user=user).pk}/messages", {"content": "one two three"}
        _requests_stream(monkeypatch)
    body = json.dumps(body).encode()
    streaming_when_done = []

    async def scenario():
        blocked = asyncio.Event()
        receive = _body_then_disconnect(body, blocked)

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                blocked.set()
                await asyncio.Event().wait()  # the reader never reads again

        scope = http_scope("POST", url, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers])
        await OneHopASGIHandler()(scope, receive, send)
        await services.stream_endings_wait()
        for _ in range(20):  # the loop runs on a while, as a server's does
            await asyncio.sleep(0.05)
        streaming_when_done.extend(await asyncio.get_running_loop().run_in_executor(None, _streaming_replies))

    gc.disable()
    try:
        async_to_sync(scenario)()
    finally:
        gc.enable()
    assert streaming_when_done == []
    with rls.privileged(reason="test"):
        [message] = Message.objects.filter(role="assistant")
        assert len(TokenUsage.objects.filter(request_id=message.metadata["request_id"])) == 1


# --- 8. Two streams on one conversation at once ----------------------------------------------------


def test_two_streams_on_one_conversation_at_once_end_stored_and_metered_once_each(key, settings):
    user, secret, plans = key
    settings.CHAT_ECHO_DELAY = 0
    conversation = services.conversation_create(user=user)
    first = services.message_prepare(
        user=user, content="alpha beta gamma", conversation_id=conversation.pk, provider="echo", model="echo-1"
    )
    second = services.message_prepare(user=user, content="delta epsilon", conversation_id=conversation.pk, provider="echo", model="echo-1")

    async def drain(pending, stop_after=None):
        seen = 0
        async for event in services.message_stream(pending=pending):
            seen += 1
            if stop_after is not None and seen == stop_after:
                raise asyncio.CancelledError  # this client goes away

    async def run():
        results = await asyncio.gather(drain(first), drain(second, stop_after=1), return_exceptions=True)
        await services.stream_endings_wait()
        return results

    async_to_sync(run)()
    with rls.privileged(reason="test"):
        replies = list(Message.objects.filter(conversation_id=conversation.pk, role="assistant").order_by("sequence"))
        rows = list(TokenUsage.objects.filter(conversation_id=conversation.pk))
        conversation.refresh_from_db()
    assert [r.status for r in replies] == ["complete", "interrupted"]
    assert len(rows) == 2 and sum(r.input_tokens + r.output_tokens for r in rows) == conversation.total_tokens
    assert sum(r.input_tokens + r.output_tokens for r in replies) == conversation.total_tokens


# --- 9. Models the caller may not use -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status"),
    [("gpt-4o-mini", 400), ("claude-haiku-4-5", 403), ("gpt-retired", 400), ("anthropic/gpt-4o-mini", 400), ("echo/", 400)],
)
def test_a_model_the_caller_cannot_use_is_refused_in_openais_shape_and_holds_nothing(key, model, status):
    from chat.tests.factories import price_add

    user, secret, plans = key
    price_add(provider="openai", model="gpt-retired", input_price="1.00", output_price="2.00", is_active=False)
    plans["free"].monthly_tokens = 80
    with rls.privileged(reason="test"):
        plans["free"].save()
    for stream in (False, True):
        refused = _post(secret, {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": stream})
        assert refused.status_code == status, (refused.status_code, refused.content[:300])
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    ok = _post(secret, {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
    assert ok.status_code == 200, ok.content[:300]  # nothing was left reserved
    with rls.privileged(reason="test"):
        assert TokenUsage.objects.count() == 1 and not PendingCall.objects.exists()


def test_a_stream_its_client_does_not_read_is_marked_alive_beat_after_beat(key, monkeypatch):
    """The mark outlives a beat only by renewal: a slow reader's stream, suspended between two
    events, must stay marked past several of the mark's lifetimes (beats made short here), and
    lose the mark once it ends."""
    from django_redis import get_redis_connection

    user, _secret, _plans = key
    monkeypatch.setattr(services, "STREAM_HEARTBEAT_SECONDS", 0.1)  # the mark lasts 0.4 s
    pending = services.message_prepare(user=user, content="one two three", provider="echo", model="echo-1")
    mark = services.STREAM_ALIVE_KEY.format(pending.request_id)
    redis = get_redis_connection("default")

    async def run():
        events = services.message_stream(pending=pending)
        await events.__anext__()  # the first delta; then the client stops reading for a while
        seen = []
        for _ in range(12):  # 1.2 s: three lifetimes of the mark
            await asyncio.sleep(0.1)
            seen.append(bool(redis.exists(mark)))
        rest = [event async for event in events]
        await asyncio.sleep(0.5)  # past the mark's lifetime, with no beat after the end
        return seen, rest[-1], bool(redis.exists(mark))

    seen, done, after = async_to_sync(run)()
    assert all(seen), seen
    assert done["type"] == "done" and done["status"] == "complete"
    assert not after
