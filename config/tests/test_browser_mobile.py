"""Every signed-in page fits a 390 px phone screen (nothing wider than the viewport), pages
run under the Content-Security-Policy without a violation, and Swagger UI renders offline."""

import pytest
from django.urls import URLResolver, get_resolver

from accounts import services as accounts_services
from accounts.tests.factories import PASSWORD
from analytics.tests.usage_data import usage_world
from billing.revenue import revenue_snapshot_take
from chat import services as chat_services
from chat.models import Message
from chat.tests.factories import make_catalog
from config.db import rls

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
LONG_AGENT = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Pro Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"


def _phone(browser, *, user_agent: str | None = None):
    context = browser.new_context(viewport=PHONE, user_agent=user_agent) if user_agent else browser.new_context(viewport=PHONE)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.csp_violations = []
    tab.on("console", lambda message: "Content Security Policy" in message.text and tab.csp_violations.append((tab.url, message.text[:60])))
    return tab


def _log_in(tab, base: str, email: str) -> None:
    tab.goto(f"{base}/accounts/login/")
    tab.get_by_label("Email").fill(email)
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Log in").click()
    tab.wait_for_url(f"{base}/")


def _signed_in_pages() -> list[str]:
    """Every page under /settings/, /usage/, /billing/ and /chat/ without a parameter in its path, from the URL confs."""

    def walk(patterns, prefix: str):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route)
            elif "<" not in route:
                yield "/" + route

    return sorted(
        path for path in walk(get_resolver().url_patterns, "") if path.startswith(("/settings/", "/usage/", "/billing/", "/chat/"))
    )


def _chat_rows(user):
    """A conversation with long tags, an unbroken long message and a stopped reply; a persona."""
    persona = chat_services.persona_create(user=user, name="A persona with a rather long name for a phone", system_prompt="Be brief.")
    conversation = chat_services.conversation_create(
        user=user, title="A conversation title long enough to wrap on a phone screen", persona=persona, tags=["a-long-tag-name", "work"]
    )
    with rls.privileged(reason="test: chat messages"):
        for sequence, role, content, status in [
            (1, "user", "https://example.com/" + "a-very-long-unbroken-path" * 8, "complete"),
            (2, "assistant", "A reply that was stopped " * 10, "interrupted"),
        ]:
            Message.objects.create(
                conversation=conversation, user_id=user.pk, sequence=sequence, role=role, content=content, status=status, model="echo-1"
            )
    return conversation, persona


def _widths(tab, base: str, paths: list[str]) -> dict[str, int]:
    """scrollWidth of each page this user may GET (POST-only routes and others' pages are left out)."""
    widths = {}
    for path in paths:
        if tab.request.get(f"{base}{path}").status in (403, 404, 405):
            continue
        response = tab.goto(f"{base}{path}")
        assert response.status == 200, (path, response.status)
        tab.wait_for_load_state("load")
        widths[path] = tab.evaluate("document.documentElement.scrollWidth")
    return widths


def _too_wide(widths: dict[str, int]) -> dict[str, int]:
    return {path: width for path, width in widths.items() if width > PHONE["width"]}


def test_every_signed_in_page_fits_a_390px_phone(live_server, browser):
    world = usage_world()
    alice, acme = world.alice, world.acme
    with rls.privileged(reason="test: rows for every table"):
        accounts_services.provider_credential_set(user=alice, provider="openai", api_key="sk-" + "a" * 36 + "f3a9")
        accounts_services.provider_credential_set(user=alice, provider="anthropic", api_key="sk-ant-" + "b" * 40)
        for name in ("Production deploy key for the reporting service", "ci"):
            accounts_services.api_key_create(user=alice, name=name, scopes=["account:read", "usage:read"])
        _, token = accounts_services.invitation_create(
            actor=alice, organization=acme, email="a.very.long.address.for.a.new.colleague@subsidiary.example.com", role="admin"
        )
        accounts_services.invitation_create(actor=alice, organization=world.beta, email=world.bob.email)
        revenue_snapshot_take()
        make_catalog()
    conversation, persona = _chat_rows(alice)
    base = live_server.url
    _log_in(_phone(browser, user_agent=LONG_AGENT), base, alice.email)  # a second session in the sessions table

    tab = _phone(browser)
    _log_in(tab, base, alice.email)
    pages = _signed_in_pages()
    assert {"/settings/api-keys/", "/settings/sessions/", "/settings/organization/", "/usage/", "/usage/staff/"} <= set(pages)
    assert {"/billing/", "/billing/staff/"} <= set(pages)
    assert {"/chat/", "/chat/personas/"} <= set(pages)
    pages += ["/", f"/settings/organization/?org={acme.pk}", f"/usage/?organization={acme.pk}", f"/billing/?org={acme.pk}"]
    pages += [f"/chat/{conversation.pk}/", f"/chat/{conversation.pk}/delete/", f"/chat/personas/{persona.pk}/", "/chat/?archived=all"]
    member_widths = _widths(tab, base, pages)
    assert _too_wide(member_widths) == {}
    assert tab.csp_violations == []

    invitee = _phone(browser)
    _log_in(invitee, base, world.bob.email)
    invitee_pages = ["/settings/organization/", f"/accounts/invitations/{token}/"]
    invitee_widths = _widths(invitee, base, invitee_pages)
    assert set(invitee_widths) == set(invitee_pages)
    assert _too_wide(invitee_widths) == {}

    staff = _phone(browser)
    _log_in(staff, base, world.staff.email)
    staff_widths = _widths(staff, base, [path for path in pages if path not in member_widths])
    assert _too_wide(staff_widths) == {}
    # Every page was measured by someone: only POST-only routes are left.
    post_only = {"/settings/organization/new/", "/billing/checkout/", "/billing/portal/", "/billing/stripe/webhook", "/chat/new/"}
    post_only |= {"/chat/porting/export/"}  # starts an export (chat/porting/)
    assert set(pages) - set(member_widths) - set(staff_widths) == post_only
    assert invitee.csp_violations == staff.csp_violations == []


def test_swagger_ui_renders_offline_under_the_csp(live_server, browser):
    base = live_server.url
    tab = _phone(browser)
    outside = []

    def only_this_server(route):
        if route.request.url.startswith(base):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    tab.route("**/*", only_this_server)
    tab.goto(f"{base}/api/docs/")
    tab.locator(".swagger-ui .info .title").wait_for()
    assert "Confab API" in tab.locator(".swagger-ui .info .title").inner_text()
    assert tab.locator(".opblock").count() > 10
    assert outside == []
    assert tab.csp_violations == []


def test_the_admin_runs_under_the_csp(live_server, browser):
    world = usage_world(rollup=False)
    tab = _phone(browser)
    _log_in(tab, live_server.url, world.staff.email)
    for path in ("/admin/", "/admin/accounts/user/", f"/admin/accounts/user/{world.alice.pk}/change/", "/admin/accounts/organization/"):
        assert tab.goto(f"{live_server.url}{path}").status == 200, path
        tab.wait_for_load_state("load")
    assert tab.csp_violations == []
