"""The notifications panel: a parse request's title (from the real parser worker) and an exchange
result (from the real exchange service) show up live, as text, on every tab of the user."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

import pytest
from playwright.async_api import expect

from hub.settings import Settings
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import DESKTOP, PHONE, Pages
from tests.conftest import free_port, serve_hub, unique_name
from tests.page_server import TITLE, serve_pages


def missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


@contextlib.asynccontextmanager
async def running(args: list[str], env: Mapping[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process of this test, stopped with SIGTERM (then killed) on exit."""
    process = await asyncio.create_subprocess_exec(sys.executable, *args, env={**os.environ, **env},
                                                   stdout=asyncio.subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                async with asyncio.timeout(5):
                    await process.wait()


@pytest.mark.skipif(missing("parser_bridge.worker"), reason="parser_bridge/worker.py is not written yet")
async def test_a_parse_request_shows_its_title_in_the_notifications_panel(
        settings: Settings, pages: Pages) -> None:
    assert settings.redis_url is not None  # the worker takes jobs from Redis
    worker_env = {"REDIS_URL": settings.redis_url, "REDIS_CHANNEL_PREFIX": settings.redis_channel_prefix,
                  "PARSER_ALLOW_PRIVATE": "1"}
    name = unique_name("reader")
    async with serve_hub(settings) as hub, serve_pages() as site, \
            running(["-m", "parser_bridge.worker"], worker_env):
        desktop = ChatPage(await pages.open(DESKTOP), hub.base_url)
        phone = ChatPage(await pages.open(PHONE), hub.base_url)
        await desktop.register(name)
        await phone.sign_in(name)

        await desktop.by("parse-url").fill(site.url("/page"))
        await desktop.by("parse-submit").click()
        item = desktop.by("notification").filter(has=desktop.page.get_by_text(site.url("/page")))
        await expect(item.get_by_test_id("notification-title")).to_have_text(TITLE, timeout=20_000)
        await expect(item).to_have_attribute("data-status", "success")
        assert await desktop.by("notification-list").locator("from").count() == 0  # text, not markup

        # The phone, which does not show the panel, counts the result and shows it when asked.
        await expect(phone.by("notification-count")).to_have_text("1")
        await phone.by("toggle-notifications").click()
        await expect(phone.by("notification-title")).to_have_text(TITLE)
        await expect(phone.by("notification-count")).to_be_hidden()


@pytest.mark.skipif(missing("parser_bridge.exchange_service"),
                    reason="parser_bridge/exchange_service.py is not written yet")
async def test_an_exchange_result_shows_in_the_notifications_panel(settings: Settings, pages: Pages) -> None:
    port = free_port()
    settings = replace(settings, exchange_service_url=f"http://127.0.0.1:{port}")
    async with serve_hub(settings) as hub:
        assert settings.exchange_service_token is not None
        service_env = {"HUB_URL": hub.base_url, "EXCHANGE_SERVICE_TOKEN": settings.exchange_service_token,
                       "EXCHANGE_DELAY": "0"}
        async with running(["-m", "parser_bridge.exchange_service", "--host", "127.0.0.1",
                            "--port", str(port)], service_env):
            page = ChatPage(await pages.open(DESKTOP), hub.base_url)
            await page.register(unique_name("trader"))
            await page.by("exchange-rate").fill("2.5")
            row = page.by("bills").locator("li").first
            await row.locator('[name="denomination_id"]').fill("1")
            await row.locator('[name="denomination"]').fill("100")
            await row.locator('[name="count"]').fill("3")
            await page.by("add-bill").click()
            row = page.by("bills").locator("li").nth(1)
            await row.locator('[name="denomination_id"]').fill("2")
            await row.locator('[name="denomination"]').fill("0.5")
            await row.locator('[name="count"]').fill("1")
            await page.by("exchange-submit").click()
            item = page.by("notification").filter(has=page.page.get_by_text("Exchange #"))
            await expect(item).to_have_attribute("data-status", "completed", timeout=20_000)
            await expect(item.get_by_test_id("notification-title")).to_contain_text("751.25 RUB")
            await expect(item).to_contain_text("bill 1: 750")
            await expect(item).to_contain_text("bill 2: 1.25")
