"""message_send and message_stream: store, call, store, meter — and refuse, fail or be cut
off without losing a message or a metered token."""

import asyncio
import threading
from decimal import Decimal
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django.db import connections, transaction
from django.db.models import Sum

from accounts.services import provider_credential_set
from accounts.tests.factories import make_user
from analytics.models import TokenUsage
from billing.tests.factories import organization_of, put_on_plan
from chat import selectors, services
from chat.errors import ModelUnavailable, ProviderKeyMissing
from chat.models import Conversation, Message
from chat.providers.base import SENTENCES, text_tokens_estimate
from chat.tests.factories import price_add
from chat.tests.provider_servers import ProviderServer, Reply, openai_completion, openai_error, openai_stream
from config.db import rls
from config.errors import ForbiddenError, NotFoundError, QuotaExceeded, RateLimited

pytestmark = pytest.mark.django_db(transaction=True)


def ledger(**filters):
    with rls.privileged(reason="test"):
        return list(TokenUsage.objects.filter(**filters).order_by("id"))


def messages_of(user):
    with rls.privileged(reason="test"):
        return list(Message.objects.filter(user_id=user.pk).order_by("conversation_id", "sequence"))


def stored_counts():
    with rls.privileged(reason="test"):
        return Conversation.objects.count(), Message.objects.count(), TokenUsage.objects.count()


def test_send_stores_both_messages_and_meters_the_reply_once(alice):
    reply = services.message_send(user=alice, content="hello there, echo")
    user_message, message = reply.user_message, reply.message
    assert (user_message.sequence, user_message.role, user_message.content) == (1, "user", "hello there, echo")
    assert (message.sequence, message.status, message.content) == (2, "complete", "You said: hello there, echo")
    assert (message.provider, message.model) == ("echo", "echo-1")
    assert (message.input_tokens, message.output_tokens) == (3, 5)  # echo counts words
    assert message.metadata["usage"]["input_uncached"] == 3 and message.metadata["usage_raw"] == {"prompt_words": 3, "reply_words": 5}
    assert reply.conversation.title == "hello there, echo" and reply.conversation.message_count == 2
    assert reply.conversation.total_tokens == 8
    [row] = ledger()
    assert (row.user_id, row.organization_id, row.message_id, row.conversation_id) == (
        alice.pk,
        organization_of(alice).pk,
        message.pk,
        reply.conversation.pk,
    )
    assert (row.input_tokens, row.output_tokens, row.cost, row.success) == (3, 5, Decimal("0"), True)
    assert row.request_id == message.metadata["request_id"]


def test_ledger_tokens_and_cost_equal_the_sums_over_assistant_messages(alice, plans):
    put_on_plan(organization_of(alice), plans["pro"])
    price_add(provider="echo", model="echo-priced", input_price="1.50", output_price="3.25")
    conversation = None
    for text in ("one two three", "four five", "a somewhat longer message with more words in it"):
        conversation = services.message_send(
            user=alice, content=text, conversation_id=conversation and conversation.pk, model="echo-priced"
        ).conversation
    services.message_send(user=alice, content="another conversation", model="echo-priced")
    replies = [m for m in messages_of(alice) if m.role == "assistant"]
    assert len(replies) == 4 and all(m.cost > 0 for m in replies)
    rows = ledger()
    assert sum(r.input_tokens for r in rows) == sum(m.input_tokens for m in replies)
    assert sum(r.output_tokens for r in rows) == sum(m.output_tokens for m in replies)
    assert sum(r.cost for r in rows) == sum(m.cost for m in replies)
    [first] = [m for m in replies if m.content == "You said: one two three"]  # 3 words in, 5 out
    assert (3 * Decimal("1.50") + 5 * Decimal("3.25")) / 1_000_000 == Decimal("0.00002075")
    assert first.cost == Decimal("0.0000207500")  # exact: the ledger keeps 1e-10
    assert {r.input_price for r in rows} == {Decimal("1.5")} and {r.output_price for r in rows} == {Decimal("3.25")}
    with rls.privileged(reason="test"):
        totals = Conversation.objects.aggregate(tokens=Sum("total_tokens"), cost=Sum("total_cost"))
    assert totals == {"tokens": sum(r.total_tokens for r in rows), "cost": sum(r.cost for r in rows)}
    # The history goes to the provider: the third reply's prompt counted the earlier turns.
    assert replies[2].input_tokens > len("a somewhat longer message with more words in it".split())


def test_a_refused_send_stores_nothing_and_meters_nothing(alice, plans):
    organization = organization_of(alice)
    plans["free"].monthly_tokens = 5
    with rls.privileged(reason="test"):
        plans["free"].save()
    with pytest.raises(QuotaExceeded) as refused:
        services.message_send(user=alice, content="this message needs more than five tokens of room, surely")
    assert "5 tokens a month" in refused.value.message and refused.value.status_code == 402
    assert stored_counts() == (0, 0, 0)

    put_on_plan(organization, plans["pro"])
    plans["pro"].requests_per_minute = 1
    with rls.privileged(reason="test"):
        plans["pro"].save()
    conversation = services.message_send(user=alice, content="first").conversation
    before = stored_counts()
    with pytest.raises(RateLimited) as limited:
        services.message_send(user=alice, content="second", conversation_id=conversation.pk)
    assert limited.value.status_code == 429 and limited.value.retry_after >= 1
    assert stored_counts() == before == (1, 2, 1)


def test_a_send_to_a_conversation_in_an_organization_the_user_is_not_in_is_refused(alice):
    # The subscription is read with the conversation's row: one the caller cannot see is no membership.
    bob = make_user(email="bob@example.com")
    with rls.privileged(reason="test: a conversation left in an organization alice is not in"):
        conversation = Conversation.objects.create(user_id=alice.pk, organization_id=organization_of(bob).pk)
    before = stored_counts()
    with pytest.raises(ForbiddenError) as refused:
        services.message_send(user=alice, content="hello", conversation_id=conversation.pk)
    assert refused.value.status_code == 403 and "not a member" in refused.value.message
    assert stored_counts() == before


def test_a_reply_whose_conversation_was_deleted_while_it_streamed_is_still_metered_once(alice):
    from chat.providers import Usage

    pending = services.message_prepare(user=alice, content="delete me mid-stream")
    services.conversation_delete(user=alice, conversation=pending.conversation)
    message = services._reply_finish(
        pending, text="You said: delete me mid-stream", usage=Usage(input_uncached=4, output=5), status="complete", latency_ms=5
    )
    assert message.content == "You said: delete me mid-stream"
    [row] = ledger()  # the provider's tokens were spent: metered, though nothing is stored
    assert (row.request_id, row.input_tokens, row.output_tokens, row.message_id) == (pending.request_id, 4, 5, message.pk)
    assert stored_counts() == (0, 0, 1)


def test_unknown_model_missing_price_and_unknown_provider_are_refused_with_the_reason(alice):
    with pytest.raises(ModelUnavailable, match="no price in the catalog") as missing:
        services.message_send(user=alice, content="hi", provider="openai", model="gpt-unknown")
    assert missing.value.status_code == 400
    price_add(provider="echo", model="echo-retired", input_price="1", output_price="1", is_active=False)
    with pytest.raises(ModelUnavailable, match="echo-retired"):
        services.message_send(user=alice, content="hi", model="echo-retired")
    with pytest.raises(ModelUnavailable, match="Unknown provider 'mistral'"):
        services.message_send(user=alice, content="hi", provider="mistral", model="large")
    assert stored_counts() == (0, 0, 0)


@pytest.fixture
def openai_server():
    server = ProviderServer().start()
    yield server
    server.stop()


def test_openai_with_the_users_key_and_a_401_becoming_a_failed_metered_message(alice, openai_server):
    with rls.privileged(reason="test"):
        provider_credential_set(user=alice, provider="openai", api_key="sk-user-own-key-1234567890", base_url=f"{openai_server.url}/v1")
    openai_server.queue(
        Reply(body=openai_completion("Paris.", {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14})),
        Reply(status=401, body=openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")),
    )
    ok = services.message_send(user=alice, content="Capital of France?", provider="openai", model="gpt-4o-mini")
    assert (ok.message.content, ok.message.input_tokens, ok.message.output_tokens) == ("Paris.", 12, 2)
    assert ok.message.cost == Decimal("0.000003")  # 12 × 0.15 + 2 × 0.60, per million
    assert openai_server.received[0].headers["authorization"] == "Bearer sk-user-own-key-1234567890"
    assert openai_server.received[0].body["model"] == "gpt-4o-mini"

    failed = services.message_send(
        user=alice, content="And of Spain?", conversation_id=ok.conversation.pk, provider="openai", model="gpt-4o-mini"
    )
    assert failed.message.status == "failed" and failed.message.content == ""
    assert failed.message.error == "The AI provider rejected the API key. Check the provider's key in the settings."
    sent = [m["content"] for m in openai_server.received[1].body["messages"]]
    assert sent == ["Capital of France?", "Paris.", "And of Spain?"]
    rows = ledger()
    assert [(r.success, r.input_tokens, r.output_tokens, r.error) for r in rows] == [(True, 12, 2, ""), (False, 0, 0, failed.message.error)]


def test_a_provider_without_any_key_is_refused_before_anything_is_stored(alice, plans):
    put_on_plan(organization_of(alice), plans["pro"])  # a paid plan, but no managed key is configured
    with pytest.raises(ProviderKeyMissing, match="add yours in Settings"):
        services.message_send(user=alice, content="hi", provider="anthropic", model="claude-haiku-4-5")
    assert stored_counts() == (0, 0, 0)


def test_a_paid_plan_uses_the_platforms_managed_key(alice, plans, openai_server, settings):
    settings.OPENAI_API_KEY = "sk-platform-managed"
    put_on_plan(organization_of(alice), plans["pro"])
    with rls.privileged(reason="test"):
        provider_credential_set(user=alice, provider="openai", access_type="pro_managed")
    openai_server.queue(Reply(body=openai_completion("Hi.", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    # The managed key talks to OpenAI itself (no base URL): the SDK's own variable points it here.
    with mock.patch.dict("os.environ", {"OPENAI_BASE_URL": f"{openai_server.url}/v1"}):
        reply = services.message_send(user=alice, content="hi", provider="openai", model="gpt-4o-mini")
    assert reply.message.status == "complete"
    assert openai_server.received[0].headers["authorization"] == "Bearer sk-platform-managed"


def _consume(pending, *, cancel_after: int) -> list[dict]:
    """Read a stream as a client would, and go away (the task cancelled) after some deltas."""
    events: list[dict] = []

    async def read():
        async for event in services.message_stream(pending=pending):
            events.append(event)

    async def run():
        task = asyncio.ensure_future(read())
        while len(events) < cancel_after and not task.done():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await services.stream_endings_wait()  # the ending runs on after the cancelled task

    async_to_sync(run)()
    return events


def test_an_abandoned_stream_keeps_the_part_produced_and_meters_it(alice):
    pending = services.message_prepare(user=alice, content="one two three four five six seven eight")
    events = _consume(pending, cancel_after=3)
    received = "".join(e["text"] for e in events)
    assert received == "You said: one "
    [message] = [m for m in messages_of(alice) if m.role == "assistant"]
    assert (message.status, message.content) == ("interrupted", received)
    assert message.output_tokens == text_tokens_estimate(received) and message.metadata["estimated"] is True
    [row] = ledger()
    assert (row.message_id, row.output_tokens, row.input_tokens) == (message.pk, message.output_tokens, message.input_tokens)
    assert row.input_tokens == pending.message.metadata["prompt_tokens_estimate"] > 0


def test_a_stream_delivers_deltas_then_tokens_and_cost(alice):
    pending = services.message_prepare(user=alice, content="stream me")

    async def read():
        return [event async for event in services.message_stream(pending=pending)]

    events = async_to_sync(read)()
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "You said: stream me"
    done = events[-1]
    assert (done["type"], done["status"], done["input_tokens"], done["output_tokens"], done["cost"]) == (
        "done",
        "complete",
        2,
        4,
        "0.0000000000",  # the call's cost to 1e-10 (chat.pricing)
    )
    [row] = ledger()
    assert str(row.message_id) == done["message_id"]


def test_no_transaction_is_open_while_the_provider_is_called(alice, monkeypatch):
    seen = []
    from chat.providers import echo

    real = echo.complete

    async def watching(request, **kwargs):
        seen.append([connections[alias].in_atomic_block for alias in ("default", "privileged")])
        return await real(request, **kwargs)

    monkeypatch.setattr(echo, "complete", watching)
    services.message_send(user=alice, content="hello")
    assert seen == [[False, False]]


def test_concurrent_sends_to_one_conversation_keep_sequence_order(alice, plans):
    put_on_plan(organization_of(alice), plans["pro"])
    conversation = services.message_send(user=alice, content="start").conversation
    errors, barrier = [], threading.Barrier(4)

    def send(n):
        try:
            barrier.wait()
            services.message_send(user=alice, content=f"message {n}", conversation_id=conversation.pk)
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = [m for m in messages_of(alice) if m.conversation_id == conversation.pk]
    assert [m.sequence for m in stored] == list(range(1, 11))
    for question, answer in zip(stored[::2], stored[1::2], strict=True):
        assert (question.role, answer.role) == ("user", "assistant")
        assert answer.content == f"You said: {question.content}"
    with rls.privileged(reason="test"):
        assert Conversation.objects.get(pk=conversation.pk).message_count == 10
    assert len(ledger()) == 5


def test_a_send_that_waited_for_the_conversation_sends_the_history_committed_meanwhile(alice):
    """A send waiting on the conversation's lock must see what the holder committed. The locking
    statement's snapshot is taken when it starts, so the history read with the lock misses these
    messages; the row the lock returns is newer than the one the snapshot saw, so it is read again."""
    conversation = services.message_send(user=alice, content="start").conversation  # 1 + 3 words
    replies = []

    def send():
        try:
            replies.append(services.message_send(user=alice, content="final", conversation_id=conversation.pk).message)
        finally:
            connections.close_all()

    with rls.privileged(reason="test: another send holds the conversation"):
        held = Conversation.objects.select_for_update().get(pk=conversation.pk)
        waiter = threading.Thread(target=send)
        waiter.start()
        with connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
            for _ in range(500):  # until the send waits on the row lock
                cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                if cur.fetchone()[0]:
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the send never waited for the conversation's lock")
        for sequence, role, content in ((3, "user", "alpha beta gamma"), (4, "assistant", "delta epsilon")):
            Message.objects.create(conversation=held, user_id=alice.pk, sequence=sequence, role=role, content=content, status="complete")
        Conversation.objects.filter(pk=held.pk).update(message_count=4)
    waiter.join(10)

    [reply] = replies
    assert reply.sequence == 6
    assert reply.input_tokens == 1 + 3 + 3 + 2 + 1  # start, its reply, the two committed meanwhile, final


def _waiting_locks(cur) -> int:
    cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
    return cur.fetchone()[0]


def test_two_first_sends_racing_at_the_conversation_limit_start_one_conversation(alice, plans):
    """Each first send locks only its own conversation, so without more each would count the
    user's conversations without the other's and both would pass the plan's limit."""
    plans["free"].max_conversations = 2
    with rls.privileged(reason="test: a free plan with room for one more conversation"):
        plans["free"].save()
    services.message_send(user=alice, content="the one there is")
    first, second = (services.conversation_create(user=alice, title=title) for title in ("first", "second"))
    outcomes = {}

    def send(conversation):
        try:
            outcomes[conversation.title] = services.message_send(user=alice, content="hi", conversation_id=conversation.pk).message.status
        except QuotaExceeded as exc:
            outcomes[conversation.title] = exc.extra["code"]
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(conversation,)) for conversation in (first, second)]
    with rls.privileged(reason="test: hold the first send after it counted"):
        # An uncommitted row at the first send's sequence holds its insert, after its count.
        Message.objects.create(conversation=first, user_id=alice.pk, sequence=1, role="user", content="blocker")
        with connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
            threads[0].start()
            for _ in range(500):
                if _waiting_locks(cur):
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the first send never waited on the held row")
            threads[1].start()
            for _ in range(300):  # the second waits for the first's count to commit, or (the bug) goes through
                if _waiting_locks(cur) >= 2 or "second" in outcomes:
                    break
                threading.Event().wait(0.01)
        transaction.set_rollback(True, using=rls.PRIVILEGED_ALIAS)  # the blocker goes; the first send goes on
    for thread in threads:
        thread.join(10)

    assert outcomes == {"first": "complete", "second": "max_conversations"}
    with rls.privileged(reason="test: count the conversations"):
        assert Conversation.objects.filter(user_id=alice.pk, message_count__gt=0).count() == 2


def test_another_users_conversation_cannot_be_sent_to(alice):
    conversation = services.message_send(user=alice, content="mine").conversation
    bob = make_user(email="bob@example.com")
    with pytest.raises(NotFoundError):
        services.message_send(user=bob, content="intrude", conversation_id=conversation.pk)
    assert len(messages_of(alice)) == 2 and messages_of(bob) == []


def test_a_conversation_id_that_is_not_a_uuid_is_no_such_conversation(alice):
    with pytest.raises(NotFoundError, match="No such conversation"):
        services.message_send(user=alice, content="hello", conversation_id="1; DROP TABLE chat_message")
    assert stored_counts() == (0, 0, 0)


def test_a_send_moves_its_conversation_to_the_top_of_the_list_as_soon_as_it_is_stored(alice):
    """Before the reply is in (a stream still running), not only at its finish."""
    older = services.message_send(user=alice, content="older").conversation
    services.message_send(user=alice, content="newer")
    pending = services.message_prepare(user=alice, content="again", conversation_id=older.pk)
    pending.reservation.release()
    with rls.atomic_as(alice.pk):
        first = selectors.conversation_list(user=alice).first()
    assert first.pk == older.pk and first.message_count == 4


def test_the_history_sent_to_the_provider_is_in_order_without_failed_or_empty_replies(alice):
    one = services.message_send(user=alice, content="one")
    conversation_id = one.conversation.pk
    two = services.message_send(user=alice, content="two", conversation_id=conversation_id)
    services.message_send(user=alice, content="three", conversation_id=conversation_id)
    with rls.privileged(reason="test: one reply failed, one interrupted before any text"):
        Message.objects.filter(pk=one.message.pk).update(status="failed", error="The provider failed.")
        Message.objects.filter(pk=two.message.pk).update(status="interrupted", content="")
    pending = services.message_prepare(user=alice, content="four", conversation_id=conversation_id)
    pending.reservation.release()
    sent = [(m.role, m.content) for m in pending.request.messages]
    assert sent == [("user", "one"), ("user", "two"), ("user", "three"), ("assistant", "You said: three"), ("user", "four")]


def test_a_stream_the_provider_drops_midway_keeps_the_part_and_is_a_failed_metered_call(alice, openai_server):
    with rls.privileged(reason="test"):
        provider_credential_set(user=alice, provider="openai", api_key="sk-user-own-key-1234567890", base_url=f"{openai_server.url}/v1")
    openai_server.queue(Reply(events=openai_stream(["Hello ", "world, ", "this is cut"], None), cut_after=3))
    pending = services.message_prepare(user=alice, content="Say hello", provider="openai", model="gpt-4o-mini")

    async def read():
        return [event async for event in services.message_stream(pending=pending)]

    events = async_to_sync(read)()
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "Hello world, "
    done = events[-1]
    assert (done["type"], done["status"]) == ("done", "interrupted")
    assert done["error"] == SENTENCES["interrupted"]
    [message] = [m for m in messages_of(alice) if m.role == "assistant"]
    assert (message.status, message.content, message.error) == ("interrupted", "Hello world, ", SENTENCES["interrupted"])
    assert message.output_tokens == text_tokens_estimate("Hello world, ") and message.metadata["estimated"] is True
    [row] = ledger()
    assert (row.success, row.error, row.output_tokens, row.cost) == (False, SENTENCES["interrupted"], message.output_tokens, message.cost)


def test_a_replys_counter_increment_and_its_reservation_settlement_reach_redis_in_one_round_trip_increment_first(alice, monkeypatch):
    """Both after the ledger row's commit, in one pipeline: the usage is counted before the
    reservation that covered it goes, so it is never counted zero times."""
    from redis.connection import AbstractConnection

    from analytics import counters
    from billing.services import SETTLE_SCRIPT

    services.message_send(user=alice, content="warm up")  # the live counters exist: increments apply
    writes, real = [], AbstractConnection.send_packed_command

    def recorded(self, command, check_health=True):
        writes.append(b"".join(command) if isinstance(command, list) else command)
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", recorded)
    reply = services.message_send(user=alice, content="count me once")
    monkeypatch.undo()

    increment, settle = counters._INCR_IF_EXISTS.encode(), SETTLE_SCRIPT.encode()
    with_increment = [w for w in writes if increment in w]
    assert with_increment == [w for w in writes if settle in w] and len(with_increment) == 1, writes
    [write] = with_increment
    assert write.index(increment) < write.index(settle)
    organization = organization_of(alice)
    live = counters.counters_read(scope="org", owner_id=organization.pk)
    assert live.total_tokens == sum(row.total_tokens for row in ledger(organization_id=organization.pk))
    assert reply.message.output_tokens > 0


def test_the_history_read_with_the_lock_keeps_control_characters_quotes_and_unicode_exactly(alice):
    """The history comes back as JSON from the locking read (json_agg): what a user wrote must
    reach the provider unchanged, escapes and all."""
    awkward = 'a "quote", a back\\slash, a tab\there, a bell \x07, \u2028 a line separator, 🙂 and \\u0041'
    first = services.message_send(user=alice, content=awkward)
    pending = services.message_prepare(user=alice, content="next", conversation_id=first.conversation.pk)
    pending.reservation.release()
    assert [m.content for m in pending.request.messages] == [awkward, f"You said: {awkward}", "next"]
