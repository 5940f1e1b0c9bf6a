"""A reply whose worker died mid-stream is closed and metered by the periodic task, once."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from analytics.models import TokenUsage
from chat import services
from chat.models import Conversation, Message
from chat.providers.base import text_tokens_estimate
from chat.tasks import streams_close_stale_task
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _age(message, minutes):
    with rls.privileged(reason="test"):
        Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(minutes=minutes), content="You said: par")


def test_a_stuck_stream_is_closed_interrupted_and_metered_exactly_once(alice, celery_worker):
    stuck = services.message_prepare(user=alice, content="a worker dies while this streams").message
    fresh = services.message_prepare(user=alice, content="this one is still streaming").message
    _age(stuck, settings.CHAT_STREAM_STALE_MINUTES + 1)
    assert streams_close_stale_task.delay().get(timeout=30) == 1
    assert streams_close_stale_task.delay().get(timeout=30) == 0
    assert services.streams_close_stale() == 0
    with rls.privileged(reason="test"):
        stuck.refresh_from_db()
        fresh.refresh_from_db()
        rows = list(TokenUsage.objects.all())
    assert (stuck.status, fresh.status) == ("interrupted", "streaming")
    assert stuck.output_tokens == text_tokens_estimate("You said: par") and stuck.metadata["estimated"] is True
    [row] = rows
    assert (row.message_id, row.input_tokens, row.output_tokens) == (stuck.pk, stuck.input_tokens, stuck.output_tokens)
    assert row.request_id == stuck.metadata["request_id"]


def test_a_late_finish_after_the_task_closed_the_reply_meters_nothing_more(alice):
    pending = services.message_prepare(user=alice, content="slow provider")
    _age(pending.message, settings.CHAT_STREAM_STALE_MINUTES + 1)
    assert services.streams_close_stale() == 1
    from chat.providers import Usage

    message = services._reply_finish(
        pending, text="You said: slow provider", usage=Usage(input_uncached=2, output=4), status="complete", latency_ms=5
    )
    assert message.status == "interrupted"
    with rls.privileged(reason="test"):
        [row] = TokenUsage.objects.all()
        conversation = Conversation.objects.get(pk=pending.conversation.pk)
        stored = Message.objects.get(pk=pending.message.pk)
    # The late finish wrote nothing: not the reply, not its conversation's totals, not a ledger row.
    assert (stored.status, stored.content) == ("interrupted", "You said: par")
    assert conversation.total_tokens == row.total_tokens == stored.input_tokens + stored.output_tokens
    assert pending.conversation.total_tokens == 0  # the caller's copy unchanged too
