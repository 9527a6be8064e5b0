"""Web Push in Chromium (protocol §13): the page's "Notify me" registers /sw.js on a click; a
push delivered to the service worker through the DevTools protocol (`ServiceWorker.
deliverPushMessage`) shows the chat's notification, and the address its click opens
(`/?chat=<id>`) opens that chat. No push service is reachable from the test machine (and
Chrome refuses the Push API in a headless incognito context), so `pushManager.subscribe` is not
exercised here; tests/test_push.py covers subscribing and sending. A close push
(`{"close": "chat-<id>"}`, what the hub sends once the chat was read elsewhere) closes that
chat's notifications and no other, and so does reading the chat on the page."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from playwright.async_api import Page, expect

from hub.push_crypto import generate_vapid_key
from hub.settings import Settings
from tests.browser.chat_page import PASSWORD, ChatPage
from tests.browser.conftest import Pages
from tests.conftest import RunningHub, serve_hub, unique_name


@pytest.fixture
async def push_hub(settings: Settings) -> AsyncIterator[RunningHub]:
    async with serve_hub(replace(settings, vapid_private_key=generate_vapid_key(),
                                 vapid_subject="mailto:ops@example.com")) as running:
        yield running


async def test_a_push_shows_the_chats_notification_and_its_click_opens_the_chat(
        push_hub: RunningHub, pages: Pages) -> None:
    alice_page = await pages.open()
    await alice_page.context.grant_permissions(["notifications"], origin=push_hub.base_url)
    alice, bob = ChatPage(alice_page, push_hub.base_url), ChatPage(await pages.open(), push_hub.base_url)
    alice_name, bob_name = unique_name("a"), unique_name("b")
    await alice.register(alice_name)
    await expect(alice.by("enable-push")).to_be_visible()
    pages.log(alice_page).allow("does not support the Push API in incognito mode")  # Chrome's own
    await alice.by("enable-push").click()  # registers /sw.js; subscribing fails here (no push service)
    await expect(alice.by("enable-push")).to_have_attribute("data-error", re.compile("."))
    await bob.register(bob_name)
    await bob.start_chat_with(alice_name)
    await bob.send("dinner at eight?")
    login = await push_hub.http.post("/api/v1/auth/login",
                                     json={"username": alice_name, "password": PASSWORD})
    chats = await push_hub.http.get("/api/v1/chats", headers={
        "Authorization": f"Bearer {login.json()['access_token']}"})
    [chat] = chats.json()["items"]
    chat_id = chat["id"]

    cdp = await alice_page.context.new_cdp_session(alice_page)
    registrations: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    cdp.on("ServiceWorker.workerRegistrationUpdated",
           lambda event: [registrations.put_nowait(r) for r in event["registrations"]])
    await cdp.send("ServiceWorker.enable")
    async with asyncio.timeout(15):
        while True:
            registration = await registrations.get()
            if registration["scopeURL"] == push_hub.base_url + "/" and not registration["isDeleted"]:
                break
    payload = {"title": bob_name, "body": "dinner at eight?", "event": {
        "id": 2, "name": "chat.message", "created_at": "2026-12-07T10:00:00.000Z",
        "data": {"id": 1, "chat_id": chat_id, "sender_id": 1, "sender_username": bob_name,
                 "text": "dinner at eight?"}}}
    shown: list[dict[str, Any]] = []
    # Under a loaded CI machine Chromium once dropped a push delivered through DevTools (nothing
    # shown in 15 s; never reproduced alone): a push not shown within 5 s is delivered again, as a
    # push service would retry it. The same tag means a second delivery replaces, never adds.
    for _ in range(3):
        await cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": push_hub.base_url, "registrationId": registration["registrationId"],
            "data": orjson.dumps(payload).decode()})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while not shown:
                    shown = await alice_page.evaluate(
                        "navigator.serviceWorker.ready.then(r => r.getNotifications())"
                        ".then(ns => ns.map(n => ({title: n.title, body: n.body, tag: n.tag,"
                        " url: n.data.url})))")
                    await asyncio.sleep(0.1)
        if shown:
            break
    assert shown == [{"title": bob_name, "body": "dinner at eight?", "tag": f"chat-{chat_id}",
                      "url": f"/?chat={chat_id}"}]

    await alice_page.goto(push_hub.base_url + shown[0]["url"])  # what the click opens
    await expect(alice.by("chat-title")).to_have_text(chat["title"])
    await expect(alice.message("dinner at eight?")).to_have_count(1)
    assert alice_page.url == push_hub.base_url + "/"  # the address is cleaned


async def notifications(page: Page) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = await page.evaluate(
        "navigator.serviceWorker.ready.then(r => r.getNotifications())"
        ".then(ns => ns.map(n => ({title: n.title, tag: n.tag})))")
    return shown


async def wait_notifications(page: Page, tags: set[str]) -> None:
    async with asyncio.timeout(15):
        while {n["tag"] for n in await notifications(page)} != tags:
            await asyncio.sleep(0.1)


async def test_a_close_push_and_reading_the_chat_close_its_notifications(
        push_hub: RunningHub, pages: Pages) -> None:
    alice_page = await pages.open()
    await alice_page.context.grant_permissions(["notifications"], origin=push_hub.base_url)
    alice, bob = ChatPage(alice_page, push_hub.base_url), ChatPage(await pages.open(), push_hub.base_url)
    alice_name, bob_name = unique_name("a"), unique_name("b")
    await alice.register(alice_name)
    pages.log(alice_page).allow("does not support the Push API in incognito mode")
    await alice.by("enable-push").click()  # registers /sw.js
    await bob.register(bob_name)
    await bob.start_chat_with(alice_name)
    await bob.send("are you there?")
    login = await push_hub.http.post("/api/v1/auth/login",
                                     json={"username": alice_name, "password": PASSWORD})
    chats = await push_hub.http.get("/api/v1/chats", headers={
        "Authorization": f"Bearer {login.json()['access_token']}"})
    [chat] = chats.json()["items"]
    tag = f"chat-{chat['id']}"
    await expect(alice.chat_item(chat["title"])).to_have_count(1)

    cdp = await alice_page.context.new_cdp_session(alice_page)
    registrations: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    cdp.on("ServiceWorker.workerRegistrationUpdated",
           lambda event: [registrations.put_nowait(r) for r in event["registrations"]])
    await cdp.send("ServiceWorker.enable")
    async with asyncio.timeout(15):
        while True:
            registration = await registrations.get()
            if registration["scopeURL"] == push_hub.base_url + "/" and not registration["isDeleted"]:
                break

    async def deliver(payload: dict[str, Any]) -> None:
        await cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": push_hub.base_url, "registrationId": registration["registrationId"],
            "data": orjson.dumps(payload).decode()})

    message = {"title": bob_name, "body": "are you there?", "event": {
        "id": 2, "name": "chat.message", "created_at": "2026-12-07T10:00:00.000Z",
        "data": {"id": 1, "chat_id": chat["id"], "sender_id": 1, "sender_username": bob_name,
                 "text": "are you there?"}}}
    parsed = {"title": "Parsed", "body": "", "event": {
        "id": 3, "name": "parse.completed", "created_at": "2026-12-07T10:00:00.000Z", "data": {}}}
    await deliver(message)
    await deliver(parsed)
    await wait_notifications(alice_page, {tag, "event-parse.completed"})
    await deliver({"close": tag})  # read on another device
    await wait_notifications(alice_page, {"event-parse.completed"})

    await deliver(message)
    await wait_notifications(alice_page, {tag, "event-parse.completed"})
    await alice.open_chat(chat["title"])  # read here: the page tells its service worker
    await expect(alice.message("are you there?")).to_have_count(1)
    await wait_notifications(alice_page, {"event-parse.completed"})
