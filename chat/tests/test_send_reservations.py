"""A send reserves its most in the organization's budget (billing) and every way it ends
gives the reservation back: metered, refused after the check, or closed by the stale-stream task."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from billing.tests.factories import organization_of
from billing.tests.test_reservations import NOTHING_OPEN, _open
from chat import services
from chat.errors import ProviderKeyMissing
from chat.models import Message
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_metered_send_leaves_nothing_reserved_and_its_reply_stops_at_the_output_cap(alice, settings):
    settings.CHAT_MAX_OUTPUT_TOKENS = 4
    reply = services.message_send(user=alice, content="one two three four five six")
    assert reply.message.content == "You said: one two"  # four words: the cap the reservation counted
    assert reply.message.output_tokens == 4
    assert reply.message.metadata["reservation"]  # the free plan has a monthly limit: something was held
    assert _open(organization_of(alice)) == NOTHING_OPEN


def test_a_send_refused_after_the_check_gives_its_reservation_back(alice):
    with pytest.raises(ProviderKeyMissing):  # no OpenAI key anywhere: refused after the entitlement check
        services.message_send(user=alice, content="hello", provider="openai", model="gpt-4o-mini")
    assert _open(organization_of(alice)) == NOTHING_OPEN


def test_a_reply_closed_by_the_stale_stream_task_gives_its_reservation_back(alice):
    pending = services.message_prepare(user=alice, content="a worker dies while this streams")
    assert _open(organization_of(alice))["calls"] == 1
    with rls.privileged(reason="test"):
        age = timezone.now() - timedelta(minutes=settings.CHAT_STREAM_STALE_MINUTES + 1)
        Message.objects.filter(pk=pending.message.pk).update(created_at=age)
    assert services.streams_close_stale() == 1
    assert _open(organization_of(alice)) == NOTHING_OPEN
