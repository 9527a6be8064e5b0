"""Presence and typing on the chat page (protocol §11) in a real browser: two users see each
other's dot turn green and grey, and see each other type."""

from __future__ import annotations

from playwright.async_api import expect

from tests.browser.chat_page import ChatPage
from tests.browser.conftest import DESKTOP, Pages
from tests.conftest import RunningHub, unique_name


async def test_two_users_see_each_others_dot_and_typing(hub: RunningHub, pages: Pages) -> None:
    alice_name, bob_name = unique_name("alice"), unique_name("bob")
    alice = ChatPage(await pages.open(DESKTOP), hub.base_url)
    bob_page = await pages.open(DESKTOP)
    bob = ChatPage(bob_page, hub.base_url)
    await alice.register(alice_name)
    await bob.register(bob_name)
    await alice.start_chat_with(bob_name)
    title = f"{alice_name} & {bob_name}"
    await expect(bob.chat_item(title)).to_have_count(1)
    await bob.open_chat(title)

    # both online: each sees the other's dot green, in the list and in the header
    for page in (alice, bob):
        await expect(page.chat_item(title).get_by_test_id("presence-dot")).to_have_attribute(
            "data-online", "true")
        await expect(page.by("chat-presence")).to_have_attribute("data-online", "true")

    await alice.by("message-input").press_sequentially("hello", delay=50)
    await expect(bob.by("typing-indicator")).to_have_text(f"{alice_name} is typing…")
    await expect(bob.by("typing-indicator")).to_be_hidden(timeout=10_000)  # shown for a while only
    await expect(alice.by("typing-indicator")).to_be_hidden()  # not one's own

    await bob_page.close()  # Bob goes away: his dot turns grey at Alice's
    await expect(alice.chat_item(title).get_by_test_id("presence-dot")).to_have_attribute(
        "data-online", "false", timeout=10_000)
    await expect(alice.by("chat-presence")).to_have_attribute("data-online", "false")

    bob = ChatPage(await pages.open(DESKTOP), hub.base_url)
    await bob.sign_in(bob_name)  # and back: green again
    await expect(alice.chat_item(title).get_by_test_id("presence-dot")).to_have_attribute(
        "data-online", "true", timeout=10_000)
