"""The metered POST's reply, rendered by config/api/outputs.Representation (chat/api.py), is what
DRF's ReplyOut renders, in a time zone with a half-hour offset."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat import services
from chat.api import _REPLY_OUT
from chat.serializers import ReplyOut

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chat_reply_renders_as_drf_does(alice):
    reply = services.message_send(user=alice, content="Hello there")
    data = {"conversation": reply.conversation, "user_message": reply.user_message, "message": reply.message}
    with timezone.override("America/St_Johns"):
        ours, drf = _REPLY_OUT(data), ReplyOut().to_representation(data)
    assert list(ours.items()) == list(drf.items())
    assert ours["message"]["content"] == "You said: Hello there" and ours["conversation"]["total_cost"] == drf["conversation"]["total_cost"]
    assert ours["conversation"]["created_at"][-6:] in ("-03:30", "-02:30")  # St John's, not UTC
    assert timedelta(0) <= timezone.now() - reply.message.created_at < timedelta(minutes=5)
