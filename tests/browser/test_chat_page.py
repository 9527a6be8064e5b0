"""The chat page in a real browser: live chat both ways, text stays text, older pages on scroll,
and the automatic reconnect after a hub restart that loses and repeats nothing."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from playwright.async_api import expect

from hub.settings import Settings
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import DESKTOP, PHONE, SCREENSHOTS, Pages
from tests.conftest import RunningHub, free_port, register, serve_hub, unique_name

MARKUP = '<img src=x onerror=alert(1)> <script>alert("x")</script> &amp; <b>bold</b>'


async def test_two_users_chat_live_both_ways(hub: RunningHub, pages: Pages) -> None:
    # Plain names (this run's database is its own) so the screenshots read well in the README.
    alice_name, bob_name = "alice", "bob"
    alice = ChatPage(await pages.open(DESKTOP), hub.base_url)
    bob = ChatPage(await pages.open(PHONE), hub.base_url)
    await alice.register(alice_name)
    await bob.register(bob_name)

    await alice.start_chat_with(bob_name)
    title = f"{alice_name} & {bob_name}"
    # The new chat reaches Bob live (chat.created), and Alice's first message marks it unread.
    await expect(bob.chat_item(title)).to_have_count(1)
    await alice.send("Hi Bob, are you there?")
    await expect(bob.chat_item(title).get_by_test_id("unread-badge")).to_have_text("1")

    await bob.open_chat(title)
    await expect(bob.message("Hi Bob, are you there?")).to_have_count(1)
    await expect(bob.chat_item(title).get_by_test_id("unread-badge")).to_have_count(0)
    await bob.by("back").click()  # the phone shows one view at a time
    await bob.open_chat(title)

    await bob.send("Yes! Typing from my phone.")
    await expect(alice.message("Yes! Typing from my phone.")).to_have_count(1)
    await alice.send("Great, let's try a second line\nright here.")
    await expect(bob.message("Great, let's try a second line\nright here.")).to_have_count(1)
    # Bob has the chat open: the read marker reaches Alice live.
    await expect(alice.by("read-receipt")).to_have_text(f"Seen by {bob_name}")

    # A second tab of Alice's (its own sign-in: sessions are per tab) sees the same live stream.
    second_tab = ChatPage(await pages.open(DESKTOP), hub.base_url)
    await second_tab.sign_in(alice_name)
    await second_tab.open_chat(title)
    await expect(second_tab.messages).to_have_count(3)
    await bob.send("Both of your tabs should show this.")
    await expect(alice.message("Both of your tabs should show this.")).to_have_count(1)
    await expect(second_tab.message("Both of your tabs should show this.")).to_have_count(1)
    await second_tab.send("Sent from the second tab.")
    await expect(alice.message("Sent from the second tab.")).to_have_count(1)
    await expect(bob.message("Sent from the second tab.")).to_have_count(1)

    for page in (alice, bob, second_tab):
        await expect(page.messages).to_have_count(5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await alice.page.screenshot(path=SCREENSHOTS / "chat-desktop.png")
    await bob.page.screenshot(path=SCREENSHOTS / "chat-phone.png")


async def test_markup_in_a_message_is_shown_as_text(hub: RunningHub, pages: Pages) -> None:
    alice_name, bob_name = unique_name("alice"), unique_name("bob")
    alice = ChatPage(await pages.open(), hub.base_url)
    bob = ChatPage(await pages.open(), hub.base_url)
    await alice.register(alice_name)
    await bob.register(bob_name)
    await alice.start_chat_with(bob_name)
    await bob.open_chat(f"{alice_name} & {bob_name}")

    await alice.send(MARKUP)
    for page in (alice, bob):
        await expect(page.message(MARKUP)).to_have_count(1)
        message_list = page.by("message-list")
        assert await message_list.locator("img, script, b").count() == 0
        await page.page.wait_for_timeout(300)  # an onerror handler would have fired by now
        assert pages.log(page.page).dialogs == []
    # The chat list's preview shows it as text too.
    await expect(bob.by("chat-list")).to_contain_text("<img src=x onerror=alert(1)>")
    assert await bob.by("chat-list").locator("img").count() == 0


async def test_leaving_a_chat(hub: RunningHub, pages: Pages) -> None:
    """Leave asks for a second click; the chat leaves the leaver's page and the remaining
    member's header drops them live (chat.member_left)."""
    alice_name, bob_name, carol_name = unique_name("alice"), unique_name("bob"), unique_name("carol")
    alice = ChatPage(await pages.open(), hub.base_url)
    bob = ChatPage(await pages.open(PHONE), hub.base_url)
    await alice.register(alice_name)
    await bob.register(bob_name)
    carol = await register(hub.http, carol_name)
    bob_id = (await hub.http.get("/api/v1/users", params={"q": bob_name},
                                 headers=carol.headers)).json()["items"][0]["id"]
    created = await hub.http.post("/api/v1/chats", headers=carol.headers,
                                  json={"title": "to leave", "member_ids": [bob_id]})
    assert created.status_code == 201, created.text
    await alice.start_chat_with(bob_name)
    title = f"{alice_name} & {bob_name}"
    await expect(alice.by("leave-chat")).to_be_visible()
    await alice.send("see you")

    await bob.open_chat(title)
    await expect(bob.message("see you")).to_have_count(1)
    leave = bob.by("leave-chat")
    await leave.click()
    await expect(leave).to_have_text("Click again to leave")
    await expect(bob.chat_item(title)).to_have_count(1)  # one click does not leave
    await leave.click()
    await expect(bob.chat_item(title)).to_have_count(0)
    await expect(bob.chat_item("to leave")).to_have_count(1)  # the other chat stays
    await expect(bob.by("chat-title")).to_have_text("No chat open")
    await expect(leave).to_be_hidden()

    await expect(alice.by("chat-members")).to_have_text(alice_name)
    await alice.send("still here")


async def test_older_messages_load_when_scrolling_up(hub: RunningHub, pages: Pages) -> None:
    alice = await register(hub.http)
    bob = await register(hub.http)
    created = await hub.http.post("/api/v1/chats", headers=alice.headers,
                                  json={"title": "history", "member_ids": [bob.id]})
    assert created.status_code == 201, created.text
    chat_id = created.json()["id"]
    total = 110  # three pages: 50, 50 and 10
    for number in range(1, total + 1):
        sent = await hub.http.post(f"/api/v1/chats/{chat_id}/messages", headers=alice.headers,
                                   json={"text": f"message {number:03d}"})
        assert sent.status_code == 201

    page = ChatPage(await pages.open(), hub.base_url)
    await page.sign_in(bob.username)
    await expect(page.chat_item("history").get_by_test_id("unread-badge")).to_have_text(str(total))
    await page.open_chat("history")
    await expect(page.messages).to_have_count(50)
    await expect(page.message(f"message {total}")).to_be_visible()
    for expected in (100, total):
        await page.by("messages").evaluate("node => { node.scrollTop = 0; }")
        await expect(page.messages).to_have_count(expected)
    await page.by("messages").evaluate("node => { node.scrollTop = 0; }")
    await expect(page.message("message 001")).to_have_count(1)
    texts = await page.by("message-text").all_text_contents()
    assert texts == [f"message {n:03d}" for n in range(1, total + 1)]  # in order, none twice
    await expect(page.chat_item("history").get_by_test_id("unread-badge")).to_have_count(0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
async def test_messages_sent_while_away_arrive_after_a_hub_restart(settings: Settings, pages: Pages) -> None:
    """Alice goes offline, the hub restarts, Bob writes; when Alice is back online the page
    reconnects by itself, resumes its stream and shows each message exactly once."""
    port = free_port()
    alice_name = unique_name("alice")
    async with serve_hub(settings, port) as first:
        bob = await register(first.http)
        alice = ChatPage(await pages.open(), first.base_url)
        await alice.register(alice_name)
        alice_id = (await first.http.get("/api/v1/users", params={"q": alice_name},
                                         headers=bob.headers)).json()["items"][0]["id"]
        created = await first.http.post("/api/v1/chats", headers=bob.headers,
                                        json={"title": "through a restart", "member_ids": [alice_id]})
        assert created.status_code == 201, created.text
        chat_id = created.json()["id"]
        await alice.open_chat("through a restart")
        await post(first.http, bob.headers, chat_id, "before the restart")
        await expect(alice.message("before the restart")).to_have_count(1)

        await alice.page.context.set_offline(True)
        await expect(alice.status).to_have_attribute("data-state", "offline")

    async with serve_hub(settings, port) as second:
        for number in range(1, 6):
            await post(second.http, bob.headers, chat_id, f"while away {number}")
        await alice.page.context.set_offline(False)  # the `online` event: reconnect at once
        await alice.connected()
        for number in range(1, 6):
            await expect(alice.message(f"while away {number}")).to_have_count(1)
        await expect(alice.status).to_have_attribute("data-recovered", "true")  # resumed, not reloaded

    # The hub goes away again with the page online: it reconnects through its back-off (1012).
    async with serve_hub(settings, port) as third:
        await alice.connected()
        await post(third.http, bob.headers, chat_id, "after the second restart")
        await expect(alice.message("after the second restart")).to_have_count(1)
        await expect(alice.messages).to_have_count(7)
        texts = await alice.by("message-text").all_text_contents()
        assert len(texts) == len(set(texts)) == 7


async def post(http: httpx.AsyncClient, headers: dict[str, str], chat_id: int, text: str) -> None:
    async with asyncio.timeout(10):
        answer = await http.post(f"/api/v1/chats/{chat_id}/messages", headers=headers, json={"text": text})
    assert answer.status_code == 201, answer.text
