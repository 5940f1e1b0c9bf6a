"""Share links in a real headless Chromium: the owner shares a conversation with anyone from its
Share control, a fresh signed-out browser opens the link (and it fits a 390 px phone), the owner
revokes it, and the link then 404s."""

import pytest

from accounts.tests.factories import PASSWORD
from chat import services
from config.tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def porto(alice):
    """Made before Playwright starts: a send runs its own event loop, which Playwright's would refuse."""
    reply = services.message_send(user=alice, content="Plan a weekend in Porto")
    return services.conversation_update(user=alice, conversation=reply.conversation, title="Porto weekend")


def test_owner_shares_with_anyone_a_signed_out_browser_opens_it_and_revoke_ends_it(alice, porto, live_server, browser, page):
    from playwright.sync_api import expect

    csp_violations = []
    page.on("console", lambda message: "Content Security Policy" in message.text and csp_violations.append(message.text[:80]))
    base = live_server.url

    log_in(page, base, alice.email, PASSWORD)
    page.goto(f"{base}/chat/{porto.pk}/")
    panel = page.get_by_test_id("share-panel")
    panel.get_by_text("Share", exact=True).click()
    panel.get_by_label("Anyone with the link").check()
    panel.get_by_role("button", name="Create link").click()
    url = panel.get_by_test_id("share-url").inner_text().strip()
    assert url.startswith(f"{base}/s/")
    expect(panel.get_by_test_id("share-row")).to_contain_text("Anyone with the link")

    stranger = browser.new_context(viewport=PHONE)  # no cookies: signed out
    reader = stranger.new_page()
    opened = reader.goto(url)
    assert opened.status == 200 and opened.headers["x-robots-tag"] == "noindex, nofollow"
    expect(reader.get_by_test_id("shared-title")).to_have_text("Porto weekend")
    expect(reader.get_by_test_id("shared-user")).to_have_text("Plan a weekend in Porto")
    expect(reader.get_by_test_id("shared-assistant")).to_contain_text("You said: Plan a weekend in Porto")
    assert alice.email not in reader.content()
    assert reader.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    panel.get_by_role("button", name="Revoke").click()  # the page fixture accepts the confirmation
    expect(panel.get_by_test_id("share-row")).to_contain_text("Revoked")
    assert reader.reload().status == 404
    expect(reader.get_by_text("Porto weekend")).to_have_count(0)

    page.set_viewport_size(PHONE)
    for path in ("/chat/shares/", f"/chat/{porto.pk}/shares/"):  # the owner's pages, with a row, on a phone
        assert page.goto(f"{base}{path}").status == 200
        expect(page.get_by_test_id("share-row")).to_contain_text("Revoked")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], path
    stranger.close()
    assert csp_violations == []
