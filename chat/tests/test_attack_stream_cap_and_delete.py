"""Streamed replies attacked: a server that streams past the output cap it was asked for, and a
conversation deleted as its reply is stored. Each test's docstring: what is done, what happened
("Was:"), what should."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from accounts.services import provider_credential_set
from analytics.models import TokenUsage
from billing.models import Plan
from billing.tests.factories import organization_of, put_on_plan
from chat import services
from chat.tests.provider_servers import Reply, openai_stream
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-stream-cap-test-key-0123456789abcdef"


@pytest.fixture
def wired(alice, plans, server):
    """Alice on Pro, with her own OpenAI key pointing at the local server."""
    put_on_plan(organization_of(alice), plans["pro"])
    with rls.privileged(reason="test: provider key"):
        provider_credential_set(user=alice, provider="openai", api_key=KEY, base_url=f"{server.url}/v1")
    return alice


def _stream(pending) -> list[dict]:
    async def read():
        events = [event async for event in services.message_stream(pending=pending)]
        await services.stream_endings_wait()
        return events

    return async_to_sync(read)()


def _rows(request_id) -> list[TokenUsage]:
    with rls.privileged(reason="test"):
        return list(TokenUsage.objects.filter(request_id=request_id))


# --- A provider that streams on past the output cap ---------------------------------------------


def test_a_stream_that_goes_on_past_the_plans_output_cap_is_cut_at_the_cap(wired, plans, server):
    """A compatible server at the user's base URL (vLLM started with its own limits, a proxy, a
    hostile server) ignores `max_tokens`: the plan caps a reply at 20 tokens and the month at 1,000,
    and the server streams 3,000 tokens (and counts them so).
    Was: every delta is passed on and stored, and the ledger takes 3,000 output tokens: one message
    goes three times past the month's limit, though the check reserved only the prompt and the cap
    (a server that never stops keeps the stream open, marked alive and reserved, for ever).
    Should: the reply stops at the cap as a provider's does (message_stream stops reading past it,
    closes the provider's stream, finish reason "length"), and no message crosses the plan's
    monthly tokens beyond what its check reserved."""
    with rls.privileged(reason="test: a plan with a small output cap and month"):
        Plan.objects.filter(pk=plans["pro"].pk).update(max_output_tokens=20, monthly_tokens=1000)
    words = [f"w{n} " for n in range(3000)]
    server.queue(Reply(events=openai_stream(words, {"prompt_tokens": 5, "completion_tokens": 3000, "total_tokens": 3005})))
    pending = services.message_prepare(user=wired, content="Count for me", provider="openai", model="gpt-4o-mini")
    assert pending.request.max_tokens == 20 and server.received == []
    events = _stream(pending)
    assert server.received[0].body["max_tokens"] == 20  # the server was asked for no more
    deltas = [e for e in events if e["type"] == "delta"]
    with rls.privileged(reason="test"):
        month = sum(r.input_tokens + r.output_tokens for r in TokenUsage.objects.all())
    assert len(deltas) <= 20 and month <= 1000, (len(deltas), month)
    done = events[-1]
    assert done["type"] == "done" and done["status"] == "complete"
    with rls.privileged(reason="test"):
        [row] = TokenUsage.objects.all()
    assert row.estimated and row.output_tokens == done["output_tokens"] <= 20


# --- Deleting a conversation while its reply is being stored ------------------------------------


def test_a_conversation_deleted_as_its_streamed_reply_is_stored_does_not_leave_the_call_unmetered(alice, plans, settings, monkeypatch):
    """The user deletes a conversation (another tab, the API) just as a streamed reply in it ends.
    conversation_delete locks the conversation, then deletes its messages; the reply's finish
    (_reply_finish → _reply_update, one statement) locks the reply's row, then the conversation's
    row for its totals: the two take the same locks in opposite orders. The pause below stands in
    for the few milliseconds between the delete's two statements.
    Was: PostgreSQL detects a deadlock and aborts the finish (it waited first): the stream ends in
    OperationalError with no `done` event, the reply goes with its conversation, and the provider
    call has no ledger row at all (its reservation is left to expire): a call that is never metered,
    which a client can aim for by deleting as its reply ends.
    Should: the finish and the delete queue (the finish locks the conversation before the reply,
    as every other writer does); the delete succeeds and the call is metered once."""
    import threading
    import time

    from django.db import connections

    settings.CHAT_ECHO_DELAY = 0
    conversation = services.conversation_create(user=alice)
    pending = services.message_prepare(
        user=alice, content="one two three", conversation_id=conversation.pk, provider="echo", model="echo-1"
    )
    real_still_there = services._still_there
    locked = threading.Event()
    errors = []

    def still_there_then_pause(model, instance, sentence):
        real_still_there(model, instance, sentence)  # the conversation's row is locked now
        locked.set()
        time.sleep(0.5)

    monkeypatch.setattr(services, "_still_there", still_there_then_pause)

    def delete():
        try:
            services.conversation_delete(user=alice, conversation=conversation)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=delete)
    thread.start()
    assert locked.wait(5)
    try:
        events = _stream(pending)
    except Exception as exc:  # what the client sees: the body breaks off
        events = [{"type": "broken", "error": repr(exc)}]
    thread.join(10)
    rows = _rows(pending.request_id)
    assert not errors and events[-1]["type"] == "done" and len(rows) == 1, (errors, events[-1], len(rows))


def test_a_reply_within_its_cap_is_never_cut_however_it_is_split(wired, plans, server):
    """The cut counts deltas (each holds a token or more) and characters (32 a token at most): a
    reply of exactly the cap in one-token deltas, or of long tokens, is passed on whole."""
    with rls.privileged(reason="test: a plan with a small output cap"):
        Plan.objects.filter(pk=plans["pro"].pk).update(max_output_tokens=20)
    for words in ([f"w{n} " for n in range(20)], ["=" * 600]):  # 20 deltas; one delta of 600 characters
        server.queue(Reply(events=openai_stream(words, {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25})))
        pending = services.message_prepare(user=wired, content="Count for me", provider="openai", model="gpt-4o-mini")
        events = _stream(pending)
        assert "".join(e["text"] for e in events if e["type"] == "delta") == "".join(words)
        assert events[-1]["type"] == "done" and events[-1]["output_tokens"] == 20


def test_a_conversation_deleted_with_a_reply_whose_worker_died_still_has_its_call_metered_once(alice, plans):
    """A reply's worker dies mid-stream (the reply stays `streaming`), and the user deletes the
    conversation before the stale pass runs. Was: the reply went with its conversation and the
    stale pass found nothing: the provider call was never metered. Should: the call stays as a
    PendingCall, which the stale pass meters, once."""
    from chat.models import PendingCall

    conversation = services.conversation_create(user=alice)
    pending = services.message_prepare(
        user=alice, content="one two three", conversation_id=conversation.pk, provider="echo", model="echo-1"
    )
    services.conversation_delete(user=alice, conversation=conversation)  # no stream ever ran it: its worker is gone
    assert services.streams_close_stale(older_than_minutes=0) == 1
    [row] = _rows(pending.request_id)
    assert row.estimated and row.input_tokens == pending.message.metadata["prompt_tokens_estimate"] and row.conversation_id is None
    assert services.streams_close_stale(older_than_minutes=0) == 0
    with rls.privileged(reason="test"):
        assert not PendingCall.objects.exists()


def test_a_reply_that_ends_after_its_conversation_was_deleted_is_metered_once_and_leaves_nothing_pending(alice, plans, settings):
    """The stream runs on after the delete and ends: its own finish meters it and removes the
    PendingCall that stood in for it, so the stale pass has nothing left to meter again."""
    from chat.models import PendingCall

    settings.CHAT_ECHO_DELAY = 0
    conversation = services.conversation_create(user=alice)
    pending = services.message_prepare(
        user=alice, content="one two three", conversation_id=conversation.pk, provider="echo", model="echo-1"
    )
    services.conversation_delete(user=alice, conversation=conversation)
    events = _stream(pending)
    assert events[-1]["type"] == "done"
    with rls.privileged(reason="test"):
        assert not PendingCall.objects.exists()
    assert services.streams_close_stale(older_than_minutes=0) == 0
    assert len(_rows(pending.request_id)) == 1
