"""The metered send under a race and a crash, end to end through chat.services with real
processes: 50 senders on a quota with 1% left never exceed it and are refused only when
settled usage plus the replies in progress leave no room; a worker killed mid-call has its
reservation released after the timeout and its reply metered by the stale-stream task."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from analytics import counters
from analytics.models import TokenUsage
from billing.services import reservations_expire
from billing.tests.factories import plan_with_limits
from billing.tests.test_reservations import FORK, NOTHING_OPEN, _counters_equal_ledger, _member, _open, _record
from chat import services
from chat.models import Message
from config.db import rls
from config.errors import QuotaExceeded

pytestmark = pytest.mark.django_db(transaction=True)
SENDERS = 50
LIMIT, USED = 10_000, 9_900  # 1% left
CONTENT = "hello there friend"  # echo: 3 words in, 5 out; the check reserves ceil(18/4) = 5 in + the output cap


def _sender(user, start, results) -> None:
    try:
        start.wait(60)
        try:
            reply = services.message_send(user=user, content=CONTENT)
            results.put(("sent", reply.message.input_tokens + reply.message.output_tokens))
        except QuotaExceeded as refusal:
            results.put(("refused", refusal.extra))
    except Exception as exc:  # surfaced in the parent
        results.put(("error", repr(exc)))
    finally:
        connections.close_all()


def test_50_senders_on_the_last_percent_never_exceed_it_and_leave_nothing_reserved(catalog, settings):
    settings.CHAT_MAX_OUTPUT_TOKENS = 20  # each reservation: 5 + 20 = 25 tokens, four at a time in the 100 left
    user, org = _member(plan_with_limits("race-chat", monthly_tokens=LIMIT))
    _record(user, org, input_tokens=USED)
    counters.counters_read(scope="org", owner_id=org.pk)
    connections.close_all()  # a forked child must not share the parent's database sockets
    start, results = FORK.Event(), FORK.Queue()
    children = [FORK.Process(target=_sender, args=(user, start, results)) for _ in range(SENDERS)]
    for child in children:
        child.start()
    start.set()
    outcomes = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert not [o for o in outcomes if o[0] == "error"], outcomes
    sent = [tokens for kind, tokens in outcomes if kind == "sent"]
    refused = [extra for kind, extra in outcomes if kind == "refused"]
    assert len(sent) >= 4 and refused, (len(sent), len(refused))
    for extra in refused:  # refused only with no room: settled + in progress + this call's most > limit
        assert extra["code"] == "monthly_tokens" and extra["used"] + extra["held"] + extra["needs"] > LIMIT, extra
    truth = counters.usage_from_database(scope="org", owner_id=org.pk, month=counters.month_of())
    assert truth.total_tokens == USED + sum(sent) <= LIMIT
    _counters_equal_ledger(user, org)
    assert _open(org) == NOTHING_OPEN


def _prepare_and_die(user, content, supplied, pipe) -> None:
    try:
        pending = services.message_prepare(user=user, content=content, supplied=supplied)
    except Exception as exc:  # surfaced in the parent
        pipe.send(("error", repr(exc)))
        raise
    pipe.send(("prepared", {"message_id": pending.message.pk and str(pending.message.pk), "request_id": pending.request_id}))
    time.sleep(600)  # the provider call it never returns from


def worker_killed_mid_call(user, *, content: str = "a long answer please", supplied=None) -> dict:
    """Prepare a send in a forked process and SIGKILL it during its provider call; its reply's
    `message_id` (None when unstored) and `request_id`."""
    connections.close_all()  # a forked child must not share the parent's database sockets
    parent, child_end = FORK.Pipe()
    child = FORK.Process(target=_prepare_and_die, args=(user, content, supplied, child_end))
    child.start()
    assert parent.poll(60)
    outcome, ids = parent.recv()
    assert outcome == "prepared", ids
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    return ids


def test_a_worker_killed_mid_call_is_released_after_the_timeout_and_its_reply_metered(catalog, settings):
    settings.ENTITLEMENT_RESERVATION_TIMEOUT = 1
    user, org = _member(plan_with_limits("killed-chat", monthly_tokens=LIMIT))
    message_id = worker_killed_mid_call(user)["message_id"]
    assert _open(org)["calls"] == 1
    time.sleep(1.2)
    assert reservations_expire() == 1
    assert _open(org) == NOTHING_OPEN
    with rls.privileged(reason="test: the worker died long ago"):
        Message.objects.filter(pk=message_id).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.streams_close_stale() == 1
    with rls.privileged(reason="test"):
        reply = Message.objects.get(pk=message_id)
        [row] = TokenUsage.objects.filter(message_id=message_id)
    assert reply.status == "interrupted" and row.estimated and row.input_tokens > 0
