"""Which Chromium the browser tests drive: Debian's when present, else Playwright's own
(installed on first use), else none, and the run stops saying what to install."""

import os
import subprocess
import sys

import pytest

from config.tests import browser


def test_the_system_chromium_is_used_when_present(monkeypatch, tmp_path):
    system = tmp_path / "chromium"
    system.write_text("")
    monkeypatch.setattr(browser, "SYSTEM_CHROMIUM", str(system))
    assert browser.chromium_executable() == str(system)


def test_without_a_system_chromium_playwright_installs_its_own_and_says_when_it_cannot(monkeypatch):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        if os.path.exists(p.chromium.executable_path):
            pytest.skip("Playwright's own Chromium is installed here")
    monkeypatch.setattr(browser, "SYSTEM_CHROMIUM", "/nonexistent/chromium")
    attempts = []

    def offline(args, **kwargs):  # the download leaves the machine: refuse it as an offline machine would
        attempts.append(args)
        raise subprocess.CalledProcessError(1, args)

    monkeypatch.setattr(browser.subprocess, "run", offline)
    assert browser.chromium_executable() is None
    assert attempts == [[sys.executable, "-m", "playwright", "install", "chromium"]]
    assert (
        browser.MISSING.count(". ") == 0
        and "apt-get install chromium" in browser.MISSING
        and "playwright install chromium" in browser.MISSING
    )
