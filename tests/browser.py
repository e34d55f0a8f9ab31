"""Debian's Chromium, driven by Playwright (which cannot download its own browser here)."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("GROKWEB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # screenshots, gitignored


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (skips the test when there is none: `make browser` installs it)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs it)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            yield instance
        finally:
            instance.close()


def csp_violations(page) -> list[str]:
    """A list that fills with the Content-Security-Policy violations Chromium reports on `page`
    from now on, on every page it loads (it logs each as a console error)."""
    found: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and found.append(message.text))
    return found


def wait_until(page, expression: str, timeout: float = 30_000) -> None:
    """`page.wait_for_function` for our pages: Playwright's runs the expression through the
    page's own eval, which the CSP (`script-src 'self'`) refuses; `page.evaluate` goes through
    the DevTools protocol, which no CSP governs. `timeout` in milliseconds, as Playwright's."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f} ms: {expression}")
        page.wait_for_timeout(100)
