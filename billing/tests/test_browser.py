"""A real headless Chromium changes plan without Stripe and sees the new limits on the
billing page, which fits a 390px-wide phone (Chromium and `page` come from config/tests/browser.py)."""

import pytest

from accounts.tests.factories import PASSWORD, make_user
from billing.tests.factories import current_subscription, make_plans, organization_of, put_on_plan
from config.tests.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_owner_downgrades_now_and_sees_the_free_limits(live_server, page):
    from playwright.sync_api import expect

    plans = make_plans()
    owner = make_user(email="payer@example.com")
    org = organization_of(owner)
    put_on_plan(org, plans["pro"], current_period_end=None)  # staff gave Pro in admin

    base = live_server.url
    log_in(page, base, owner.email, PASSWORD)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Billing").click()
    expect(page).to_have_url(f"{base}/billing/")
    expect(page.get_by_test_id("plan-name")).to_have_text("Pro")
    expect(page.get_by_test_id("limit-monthly_tokens")).to_have_text("5,000,000")
    expect(page.get_by_test_id("payment-not-configured")).to_be_visible()

    page.get_by_test_id("choose-free").click()
    expect(page.locator(".messages")).to_contain_text("You are now on the Free plan.")
    expect(page.get_by_test_id("plan-name")).to_have_text("Free")
    expect(page.get_by_test_id("limit-monthly_tokens")).to_have_text("100,000")
    expect(page.get_by_test_id("limit-monthly_messages")).to_have_text("1,000")
    assert current_subscription(org).plan.slug == "free"

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the plan table scrolls in its own box
