"""The chat pages in a real headless Chromium against the real ASGI server (gunicorn +
uvicorn, config/tests/serving.py): log in → new conversation with `echo` → the reply streams
in → stop mid-stream keeps the partial reply → rename, tag, archive → the usage page shows
the calls. (pytest-django's live_server is WSGI: it would buffer the stream and never see the
client go away.)"""

import time

import pytest

from accounts.tests.factories import PASSWORD
from analytics.models import TokenUsage
from chat.models import Conversation, Message
from config.db import rls
from config.tests.browser import log_in
from config.tests.serving import served

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LONG = " ".join(f"w{n}" for n in range(300))  # echo says it back a word every 0.05 s: ~15 s


def _reply_when(predicate, timeout: float = 15.0) -> Message:
    """The conversation's last reply once the server has closed it as `predicate` wants."""
    deadline = time.monotonic() + timeout
    while True:
        with rls.privileged(reason="test: read the stored reply"):
            message = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("-created_at").first()
        if message is not None and predicate(message):
            return message
        assert time.monotonic() < deadline, f"the reply stayed {message and message.status}"
        time.sleep(0.2)


def test_send_stream_stop_rename_tag_archive_and_see_the_usage(alice, page):
    from playwright.sync_api import expect

    csp_violations = []
    page.on("console", lambda message: "Content Security Policy" in message.text and csp_violations.append(message.text[:80]))
    with served(workers=1) as base:
        log_in(page, base, alice.email, PASSWORD)

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Chat").click()
        page.get_by_test_id("new-conversation").click()
        expect(page.get_by_text("No messages yet")).to_be_visible()
        page.get_by_label("Model").select_option("echo/echo-1")
        composer = page.get_by_label("Message")
        composer.fill("hello")
        composer.press("Shift+Enter")  # a new line, not a send
        composer.press_sequentially("streaming page")
        expect(page.get_by_test_id("message-user")).to_have_count(0)
        composer.press("Enter")
        reply = page.get_by_test_id("message-assistant").last
        expect(reply.locator(".chat-text")).to_have_text("You said: hello\nstreaming page")
        expect(reply.get_by_test_id("reply-meta")).to_contain_text("3 in · 5 out tokens")
        expect(page.get_by_test_id("message-user").last).to_have_text("hello\nstreaming page")
        assert _reply_when(lambda m: m.status != "streaming").status == "complete"

        # A long reply: seen arriving word by word, stopped midway, the part kept and metered.
        composer.fill(LONG)
        composer.press("Enter")
        reply = page.get_by_test_id("message-assistant").last
        expect(reply.locator(".chat-text")).to_contain_text("w20 ")
        arrived = reply.locator(".chat-text").inner_text()
        assert arrived.startswith("You said: w0 w1") and "w299" not in arrived  # streaming, not the whole reply at once
        page.get_by_role("button", name="Stop").click()
        expect(reply.get_by_test_id("reply-meta")).to_contain_text("Stopped")
        shown = reply.locator(".chat-text").inner_text()
        stopped = _reply_when(lambda m: m.status != "streaming")
        assert stopped.status == "interrupted"
        assert stopped.content.startswith(shown.strip()) and "w299" not in stopped.content
        assert stopped.output_tokens > 0  # estimated from the part kept: echo had not counted yet
        with rls.privileged(reason="test: the ledger"):
            assert sorted(TokenUsage.objects.values_list("message_id", flat=True)) == sorted(
                Message.objects.filter(role="assistant").values_list("pk", flat=True)
            )
        page.reload()
        kept = page.get_by_test_id("message-assistant").last
        expect(kept.get_by_test_id("reply-meta")).to_contain_text("Stopped")
        assert kept.locator(".chat-text").inner_text().strip() == stopped.content.strip()

        page.get_by_text("Rename, tags and persona").click()
        page.get_by_label("Title").fill("Streaming trial")
        page.get_by_label("Tags").fill("tests, echo")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_test_id("conversation-title")).to_have_text("Streaming trial")
        page.get_by_role("button", name="Archive").click()
        expect(page.get_by_test_id("archived")).to_be_visible()
        with rls.privileged(reason="test: the conversation"):
            conversation = Conversation.objects.get()
        assert (conversation.title, conversation.tags, conversation.is_archived) == ("Streaming trial", ["tests", "echo"], True)
        page.get_by_role("link", name="‹ Conversations").click()
        expect(page.get_by_text("No conversations here")).to_be_visible()  # archived ones are filtered out
        page.get_by_label("Show").select_option("archived")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_role("link", name="Streaming trial")).to_be_visible()

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
        expect(page.locator(".stat", has_text="Messages this month").locator(".stat-value")).to_have_text("2")
    assert csp_violations == []
