"""Headless Chromium for the tests marked `browser` (a pytest plugin, see conftest.py).

Chromium is Debian's /usr/bin/chromium when present, else Playwright's own build
(downloaded once with `playwright install chromium`); with neither, the run stops
with one sentence saying what to install.
"""

import os
import subprocess
import sys

import pytest
from django.db import connections

SYSTEM_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MISSING = (
    "The browser tests need Chromium: install it with `apt-get install chromium` (Debian/Ubuntu) "
    "or `.venv/bin/playwright install chromium`, then run `make test` again."
)


def chromium_executable() -> str | None:
    """Debian's Chromium, else Playwright's (installed on first use); None when neither can be had."""
    if os.path.exists(SYSTEM_CHROMIUM):
        return SYSTEM_CHROMIUM
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        bundled = p.chromium.executable_path
    if not os.path.exists(bundled):
        try:
            subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], check=True, timeout=600)
        except (subprocess.SubprocessError, OSError):
            return None
    return bundled if os.path.exists(bundled) else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_executable()
    if path is None:
        pytest.exit(MISSING, returncode=4)
    return path


@pytest.fixture
def no_persistent_connections():
    """The live server's request threads close their database connections after each request:
    a browser's keep-alive connection would otherwise hold one open past the test database."""

    saved = {alias: connections.settings[alias]["CONN_MAX_AGE"] for alias in connections}
    for alias in connections:
        connections.settings[alias]["CONN_MAX_AGE"] = 0
    yield
    for alias, value in saved.items():
        connections.settings[alias]["CONN_MAX_AGE"] = value


@pytest.fixture
def browser(chromium, no_persistent_connections, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # (assertions) are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
            # Connections the test body opened while Playwright ran are not the ones the session's
            # teardown sees (another context): close them here, or the test database cannot be dropped.
            connections.close_all()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())  # data-confirm asks before revoking
    return tab


def log_in(page, base: str, email: str, password: str) -> None:
    """Sign in through the login page and wait for home: where most browser tests begin."""
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")
