"""hub-client.js in the browser: token refresh on a live socket, a revoked session ending the page's
session (terminal), the reload of a tab resuming its stream, and keyboard-only use of the page."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import httpx
from playwright.async_api import Page, WebSocket, expect

from hub.settings import Settings
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import Pages
from tests.conftest import RunningHub, register, serve_hub, unique_name

SHORT_TTL = 10  # seconds: the smallest ACCESS_TOKEN_TTL the hub accepts


class SocketLog:
    """Every WebSocket a page opens, and the JSON frames each way."""

    def __init__(self, page: Page) -> None:
        self.sockets = 0
        self.sent: list[dict[str, object]] = []
        self.received: list[dict[str, object]] = []
        self.closed: list[int | None] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        self.sockets += 1
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload)))

    def kinds(self, frames: list[dict[str, object]]) -> list[object]:
        return [frame.get("type") for frame in frames]


async def session_in_storage(page: Page) -> dict[str, object]:
    raw = await page.evaluate("() => sessionStorage.getItem('hub:session')")
    assert isinstance(raw, str)
    stored = json.loads(raw)
    assert isinstance(stored, dict)
    return stored


async def test_tokens_refresh_on_the_live_socket_and_a_revoked_session_signs_the_page_out(
        settings: Settings, pages: Pages) -> None:
    """Two pages with 10 s tokens. The first refreshes over REST and then on its socket (no
    reconnect) and keeps working past the first token's expiry. The second's refresh token is
    used elsewhere first, so its own refresh is refused: the page ends the session (terminal)."""
    async with serve_hub(replace(settings, access_token_ttl=SHORT_TTL)) as hub:
        kept = ChatPage(await pages.open(), hub.base_url)
        revoked = ChatPage(await pages.open(), hub.base_url)
        pages.log(revoked.page).allow("status of 401")  # the refused refresh
        kept_frames = SocketLog(kept.page)
        await kept.register(unique_name("kept"))
        signed_in_at = time.monotonic()
        revoked_name = unique_name("revoked")
        await revoked.register(revoked_name)
        stolen = (await session_in_storage(revoked.page))["refresh_token"]
        rotated = await hub.http.post("/api/v1/auth/refresh", json={"refresh_token": stolen})
        assert rotated.status_code == 200

        # The revoked page learns it at its first refresh (before its token expires).
        await expect(revoked.by("auth-error")).to_have_text("Your session ended; please sign in again.",
                                                            timeout=15_000)
        await expect(revoked.by("auth-form")).to_be_visible()
        await expect(revoked.status).to_have_attribute("data-state", "signed-out")
        assert await revoked.page.evaluate("() => sessionStorage.getItem('hub:session')") is None

        async with asyncio.timeout(15):
            while "refreshed" not in kept_frames.kinds(kept_frames.received):
                await asyncio.sleep(0.1)
        assert "refresh" in kept_frames.kinds(kept_frames.sent)
        await asyncio.sleep(max(0.0, SHORT_TTL + 2 - (time.monotonic() - signed_in_at)))
        await kept.connected()
        assert kept_frames.sockets == 1  # never reconnected: the socket took the new token
        # REST calls use the new token too.
        await kept.by("user-search").fill(revoked_name)
        await expect(kept.by("user-result")).to_have_text(revoked_name)


async def test_a_reloaded_tab_resumes_its_stream(hub: RunningHub, pages: Pages) -> None:
    bob = await register(hub.http)
    page = ChatPage(await pages.open(), hub.base_url)
    alice_name = unique_name("alice")
    await page.register(alice_name)
    alice_id = await user_id(hub.http, bob.headers, alice_name)
    created = await hub.http.post("/api/v1/chats", headers=bob.headers,
                                  json={"title": "reloads", "member_ids": [alice_id]})
    chat_id = created.json()["id"]
    await hub.http.post(f"/api/v1/chats/{chat_id}/messages", headers=bob.headers, json={"text": "one"})
    await page.open_chat("reloads")
    await expect(page.message("one")).to_have_count(1)
    frames = SocketLog(page.page)
    await page.page.reload()
    await page.connected()
    await expect(page.by("me")).to_have_text(alice_name)  # still signed in: the tab kept its session
    auth = next(frame for frame in frames.sent if frame.get("type") == "auth")
    last_event_id = auth.get("last_event_id")
    assert isinstance(last_event_id, int)
    assert last_event_id > 0
    assert isinstance(auth.get("epoch"), str)
    await expect(page.status).to_have_attribute("data-recovered", "true")
    await page.open_chat("reloads")
    await hub.http.post(f"/api/v1/chats/{chat_id}/messages", headers=bob.headers, json={"text": "two"})
    await expect(page.message("two")).to_have_count(1)
    await expect(page.messages).to_have_count(2)


async def test_the_page_works_with_the_keyboard_alone(hub: RunningHub, pages: Pages) -> None:
    bob = await register(hub.http)
    page = ChatPage(await pages.open(), hub.base_url)
    keyboard = page.page.keyboard
    await page.goto()
    await page.by("auth-username").focus()
    await keyboard.type(unique_name("keys"))
    await keyboard.press("Tab")
    await keyboard.type("correct horse battery")
    await keyboard.press("Tab")
    await keyboard.press("Tab")  # past "Sign in" to "Create account"
    await keyboard.press("Enter")
    await page.connected()

    await page.by("user-search").focus()
    await keyboard.type(bob.username)
    await expect(page.by("user-result")).to_have_count(1)
    await keyboard.press("ArrowDown")
    await expect(page.by("user-result")).to_be_focused()
    await keyboard.press("Enter")
    await expect(page.by("chat-members")).to_contain_text(bob.username)
    await expect(page.by("message-input")).to_be_focused()
    await keyboard.type("first line")
    await keyboard.press("Shift+Enter")
    await keyboard.type("second line")
    await keyboard.press("Enter")
    await expect(page.message("first line\nsecond line")).to_have_count(1)
    await expect(page.by("message-input")).to_have_value("")

    await page.page.set_viewport_size({"width": 390, "height": 844})
    await page.by("toggle-notifications").focus()
    await keyboard.press("Enter")
    await expect(page.by("parse-url")).to_be_focused()
    await keyboard.press("Escape")
    await expect(page.by("notifications")).to_be_hidden()
    await expect(page.by("toggle-notifications")).to_be_focused()


async def user_id(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> int:
    found = await http.get("/api/v1/users", params={"q": name}, headers=headers)
    return int(next(user["id"] for user in found.json()["items"] if user["username"] == name))
