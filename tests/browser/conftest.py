"""Browser tests: Playwright driving the `chromium` of Debian's package (never a downloaded build).

`scripts/services` installs the package when it is missing. Each test gets fresh browser
contexts (no shared storage); the browser process is shared by the whole run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright, expect

CHROMIUM = os.environ.get("HUB_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ACTION_TIMEOUT_MS = 10_000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=ACTION_TIMEOUT_MS)


@pytest.fixture(params=["postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Browser tests run on PostgreSQL + Redis (the deployed shape) unless a test asks for more."""
    return str(request.param)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/services (it installs Debian's chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    timeout=30_000)
        try:
            yield launched
        finally:
            await launched.close()


# Errors the browser itself logs while a test has the hub down or the network off on purpose.
EXPECTED_WHILE_AWAY = ("ERR_CONNECTION_REFUSED", "ERR_INTERNET_DISCONNECTED", "WebSocket connection")


class PageLog:
    """What a page said that a test should see: console errors (CSP violations among them),
    uncaught exceptions and dialogs (which must never open: they would mean injected script)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.allowed: list[str] = list(EXPECTED_WHILE_AWAY)

    def allow(self, fragment: str) -> None:
        """A console error containing `fragment` is part of what the test does on purpose."""
        self.allowed.append(fragment)

    def unexpected(self) -> list[str]:
        return [error for error in self.errors if not any(known in error for known in self.allowed)]

    def watch(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        page.on("console", console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

        async def dialog(d: object) -> None:
            self.dialogs.append(getattr(d, "message", "?"))
            await d.dismiss()  # type: ignore[attr-defined]

        page.on("dialog", dialog)


class Pages:
    """Opens pages, each in a fresh context (its own storage) unless given one to share."""

    def __init__(self, browser: Browser) -> None:
        self._browser = browser
        self.contexts: list[BrowserContext] = []
        self.logs: dict[Page, PageLog] = {}

    async def open(self, viewport: dict[str, int] | None = None,
                   context: BrowserContext | None = None) -> Page:
        if context is None:
            context = await self._browser.new_context(viewport=viewport or DESKTOP)
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            self.contexts.append(context)
        page = await context.new_page()
        self.logs[page] = PageLog()
        self.logs[page].watch(page)
        return page

    def log(self, page: Page) -> PageLog:
        return self.logs[page]


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    for context in opened.contexts:
        await context.close()
    for log in opened.logs.values():
        assert log.dialogs == [], f"a dialog opened: {log.dialogs}"
        assert log.unexpected() == [], f"the page logged errors: {log.unexpected()}"
