"""Search as you type in a real headless Chromium: the conversation list's search box asks the
server with htmx after a pause in typing, the hit replaces the list with the term highlighted,
and the page is never reloaded; an empty box brings the list back; a message's HTML stays text."""

import pytest

from accounts.tests.factories import PASSWORD
from chat import services
from chat.models import Message
from config.db import rls
from config.tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_search_finds_as_you_type_and_highlights_without_a_reload(alice, live_server, page):
    from playwright.sync_api import expect

    conversation = services.conversation_create(user=alice, title="Holiday plans")
    with rls.atomic_as(alice.pk):
        Message.objects.create(
            conversation=conversation,
            user_id=alice.pk,
            sequence=0,
            role="user",
            content="Book the ferry to Zanzibar <img src=x onerror=alert(1)>",
        )
    services.conversation_create(user=alice, title="Groceries")
    log_in(page, live_server.url, alice.email, PASSWORD)
    page.goto(f"{live_server.url}/chat/")
    expect(page.get_by_test_id("conversation-list")).to_contain_text("Groceries")
    page.evaluate("window.__notReloaded = true")

    page.get_by_test_id("search-input").press_sequentially("zanzibar", delay=40)
    results = page.get_by_test_id("search-results")
    expect(results.get_by_test_id("search-hit")).to_have_count(1)
    expect(results.locator("mark")).to_have_text("Zanzibar")
    expect(results).to_contain_text("Holiday plans")
    expect(results).to_contain_text("<img src=x onerror=alert(1)>")  # shown as text, never as markup
    assert results.locator("img").count() == 0
    expect(page.get_by_test_id("conversation-list")).to_have_count(0)
    assert page.evaluate("window.__notReloaded") is True
    assert page.url == f"{live_server.url}/chat/"

    page.get_by_test_id("search-input").fill("")
    page.get_by_test_id("search-input").dispatch_event("input")
    expect(page.get_by_test_id("conversation-list")).to_contain_text("Groceries")
    assert page.evaluate("window.__notReloaded") is True
