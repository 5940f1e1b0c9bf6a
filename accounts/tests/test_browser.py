"""A real headless Chromium walks the account pages: sign up, sign in, add a provider key,
create an API key, use it against the API, revoke it in the browser.

Chromium and the `page` fixture come from config/tests/browser.py.
"""

import json
import re
import urllib.error
import urllib.request

import pytest

from accounts.models import ApiKey, ProviderCredential, User

PASSWORD = "browser-walk-passphrase-7"
PROVIDER_KEY = "sk-test" + "Zq9Xw8Vu7" * 3 + "k3y9"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def api_me(base_url: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base_url}/api/v1/me", headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_signup_login_provider_key_and_api_key_lifecycle(live_server, page):
    from playwright.sync_api import expect

    base = live_server.url
    email = "walker@example.com"

    # Sign up: signed in at once, on the home page.
    page.goto(f"{base}/accounts/signup/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Display name").fill("Walker")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".nav-identity")).to_have_text("Walker")
    assert User.objects.using("privileged").filter(email=email).exists()

    # Log out, log back in.
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Log in").click()
    expect(page).to_have_url(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/")

    # Settings → Provider keys: the key goes in, only its mask comes back.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    expect(page).to_have_url(f"{base}/settings/profile/")
    page.get_by_role("link", name="Provider keys").click()
    page.get_by_label("Provider").select_option("openai")
    page.get_by_label("API key").fill(PROVIDER_KEY)
    page.get_by_role("button", name="Save key").click()
    expect(page).to_have_url(f"{base}/settings/credentials/")
    expect(page.locator("td .masked")).to_have_text("sk-…k3y9")
    assert PROVIDER_KEY not in page.content()
    assert ProviderCredential.objects.using("privileged").get(user__email=email).api_key_mask == "sk-…k3y9"

    # API keys: create one with account:read; the secret is on the page once.
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("browser walk")
    page.get_by_label("Read account").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator(".secret-box #new-api-key").inner_text().strip()
    assert re.fullmatch(r"ck_[a-z0-9]{10}_[A-Za-z0-9_\-]{20,}", secret), secret
    expect(page.locator(".secret-box [data-copy='#new-api-key']")).to_be_visible()

    status, body = api_me(base, secret)
    assert status == 200 and body["email"] == email

    # Shown once: a fresh visit no longer has it. Revoke in the browser (htmx swaps the row).
    page.goto(f"{base}/settings/api-keys/")
    assert secret not in page.content()
    row = page.locator("tr", has_text="browser walk")
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".badge-error")).to_have_text("Revoked")
    assert not ApiKey.objects.using("privileged").get(name="browser walk").is_active

    status, body = api_me(base, secret)
    assert status == 401 and "revoked" in body["message"].lower()
