"""The chat page as the browser tests drive it: through `data-testid`s, like a user would."""

from __future__ import annotations

import re

from playwright.async_api import Locator, Page, expect

PASSWORD = "correct horse battery"


class ChatPage:
    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    def by(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    @property
    def status(self) -> Locator:
        return self.by("connection-status")

    @property
    def messages(self) -> Locator:
        return self.by("message-list").get_by_test_id("message")

    def message(self, text: str) -> Locator:
        """The messages whose text is exactly `text`."""
        exact = re.compile("^" + re.escape(text) + "$")
        return self.by("message-list").get_by_test_id("message-text").filter(has_text=exact)

    def chat_item(self, title: str) -> Locator:
        name = self.page.get_by_test_id("chat-name").get_by_text(title, exact=True)
        return self.by("chat-item").filter(has=name)

    async def goto(self) -> None:
        await self.page.goto(self.base_url + "/")

    async def register(self, username: str, password: str = PASSWORD) -> None:
        await self._credentials(username, password, "register")

    async def sign_in(self, username: str, password: str = PASSWORD) -> None:
        await self._credentials(username, password, "sign-in")

    async def _credentials(self, username: str, password: str, button: str) -> None:
        await self.goto()
        await self.by("auth-username").fill(username)
        await self.by("auth-password").fill(password)
        await self.by(button).click()
        await expect(self.by("me")).to_have_text(username)
        await self.connected()

    async def connected(self) -> None:
        await expect(self.status).to_have_attribute("data-state", "connected")

    async def start_chat_with(self, username: str) -> None:
        await self.by("user-search").fill(username)
        await self.by("user-result").get_by_text(username, exact=True).click()
        await expect(self.by("chat-members")).to_contain_text(username)

    async def open_chat(self, title: str) -> None:
        await self.chat_item(title).click()
        await expect(self.by("chat-title")).to_have_text(title)

    async def send(self, text: str) -> None:
        """Type and press Enter, as a user does; wait until the hub's answer shows the message."""
        await self.by("message-input").fill(text)
        await self.by("message-input").press("Enter")
        await expect(self.message(text)).to_have_count(1)
