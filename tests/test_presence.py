"""Presence and typing (protocol §11): signals to chat members, live only, beside the stream.

Each test runs on both backends (SQLite with the in-process broker and memory presence;
PostgreSQL with Redis). Hubs of several processes, a SIGKILLed one included, are in
tests/test_presence_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import httpx
import pytest

from hub.client import Event, HubClient, Reset, Signal
from hub.settings import Settings
from tests.conftest import RunningHub, serve_hub
from tests.sseutil import Message, open_stream
from tests.wsutil import connect, make_users, publish_to

CHATS = "/api/v1/chats"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_chat(http: httpx.AsyncClient, token: str, member_ids: list[int]) -> int:
    response = await http.post(CHATS, json={"title": "room", "member_ids": member_ids},
                               headers=bearer(token))
    assert response.status_code == 201, response.text
    chat_id: int = response.json()["id"]
    return chat_id


async def test_members_see_each_other_come_online_type_and_go_offline(hub: RunningHub) -> None:
    (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
    chat = await make_chat(hub.http, a_token, [b])
    sock_b = await connect(hub.ws_url, b_token)
    presence = await hub.http.get(f"{CHATS}/{chat}/presence", headers=bearer(b_token))
    assert presence.status_code == 200 and presence.json() == {"online": [b]}

    sock_a = await connect(hub.ws_url, a_token)
    assert await sock_b.next() == {"type": "presence", "chat_id": chat, "user_id": a, "online": True}
    presence = await hub.http.get(f"{CHATS}/{chat}/presence", headers=bearer(a_token))
    assert presence.json() == {"online": [a, b]}

    await sock_a.send({"type": "typing", "chat_id": chat})
    assert await sock_b.next() == {"type": "typing", "chat_id": chat, "user_id": a}
    await sock_a.send({"type": "typing", "chat_id": chat})  # within 2 s: dropped
    response = await hub.http.post(f"{CHATS}/{chat}/typing", headers=bearer(a_token))
    assert response.status_code == 204  # accepted, and dropped as well
    await sock_b.silent(0.5)
    await sock_a.silent(0.1)  # the sender hears nothing of its own typing, nor errors

    await sock_a.close()
    assert await sock_b.next() == {"type": "presence", "chat_id": chat, "user_id": a,
                                   "online": False}
    presence = await hub.http.get(f"{CHATS}/{chat}/presence", headers=bearer(b_token))
    assert presence.json() == {"online": [b]}
    await sock_b.close()


async def test_several_devices_and_a_quick_reconnect_announce_nothing(hub: RunningHub) -> None:
    (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
    chat = await make_chat(hub.http, a_token, [b])
    sock_b = await connect(hub.ws_url, b_token)
    first = await connect(hub.ws_url, a_token)
    assert (await sock_b.next())["online"] is True
    second = await connect(hub.ws_url, a_token)  # a second tab
    await first.close()
    await sock_b.silent(1.5)  # no offline: the second tab holds the user
    await second.close()
    again = await connect(hub.ws_url, a_token)  # a reconnect well within the 1 s grace
    await sock_b.silent(1.5)  # neither offline nor online
    await again.close()
    assert await sock_b.next() == {"type": "presence", "chat_id": chat, "user_id": a,
                                   "online": False}
    await sock_b.close()


async def test_strangers_get_404_for_presence_and_forbidden_for_typing(hub: RunningHub) -> None:
    (_, a_token), (b, _), (_, c_token) = await make_users(hub.settings, 3)
    chat = await make_chat(hub.http, a_token, [b])
    response = await hub.http.get(f"{CHATS}/{chat}/presence", headers=bearer(c_token))
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    response = await hub.http.post(f"{CHATS}/{chat}/typing", headers=bearer(c_token))
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    response = await hub.http.get(f"{CHATS}/{chat}/presence")
    assert response.status_code == 401
    sock_c = await connect(hub.ws_url, c_token)
    await sock_c.send({"type": "typing", "chat_id": chat})
    frame = await sock_c.next()
    assert frame["type"] == "error" and frame["code"] == "forbidden", frame
    await sock_c.send({"type": "typing", "chat_id": "seven"})
    frame = await sock_c.next()
    assert frame["type"] == "error" and frame["code"] == "bad_frame", frame
    await sock_c.send({"type": "ping"})
    assert await sock_c.next() == {"type": "pong"}  # the socket lives on
    await sock_c.close()


async def test_signals_take_no_stream_id_and_a_resume_replays_only_events(hub: RunningHub) -> None:
    (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
    chat = await make_chat(hub.http, a_token, [b])
    sock_b = await connect(hub.ws_url, b_token)
    start = sock_b.welcome["last_event_id"]
    sock_a = await connect(hub.ws_url, a_token)
    await publish_to(hub, [b], "test.one", {"n": 1})
    for _ in range(30):  # a typing flood: one is forwarded, the rest dropped, nothing else lost
        await sock_a.send({"type": "typing", "chat_id": chat})
    await publish_to(hub, [b], "test.two", {"n": 2})
    frames: list[dict[str, Any]] = []
    while not {"presence", "typing", "test.two"} <= {f.get("name", f["type"]) for f in frames}:
        frames.append(await sock_b.next())  # signals and events take separate paths: any order
    await sock_b.silent(0.5)
    signals = [frame for frame in frames if frame["type"] != "event"]
    events = [frame for frame in frames if frame["type"] == "event"]
    assert sorted(signals, key=lambda frame: frame["type"]) == [
        {"type": "presence", "chat_id": chat, "user_id": a, "online": True},
        {"type": "typing", "chat_id": chat, "user_id": a}]
    assert [event["id"] for event in events] == [start + 1, start + 2]  # consecutive: no id taken
    assert [event["name"] for event in events] == ["test.one", "test.two"]

    stored = await hub.http.get("/api/v1/events", params={"after": 0}, headers=bearer(b_token))
    assert stored.status_code == 200, stored.text
    names = [item["name"] for item in stored.json()["items"]]
    assert names == ["chat.created", "test.one", "test.two"]  # no signal is stored
    await sock_b.close()

    resumed = await connect(hub.ws_url, b_token, last_event_id=start,
                            epoch=sock_b.welcome["epoch"])
    assert resumed.welcome["recovered"] is True
    replayed = await resumed.events(2)
    assert [(event["id"], event["name"]) for event in replayed] == [
        (start + 1, "test.one"), (start + 2, "test.two")]
    await resumed.silent(0.3)  # no signal replayed
    await resumed.close()
    await sock_a.close()


@pytest.mark.parametrize("transport", ["ws", "stream"])
async def test_the_python_client_yields_signals_between_events_and_sends_typing(
        hub: RunningHub, transport: str) -> None:
    (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
    chat = await make_chat(hub.http, a_token, [b])
    listener = HubClient(hub.ws_url, b_token, signals=True, transport=transport)
    typist = HubClient(hub.ws_url, a_token)
    received: list[Event | Reset | Signal] = []

    async def listen() -> None:
        async with contextlib.aclosing(listener.events()) as items:
            async for item in items:
                received.append(item)
                if isinstance(item, Event) and item.name == "test.done":
                    return

    async def type_once() -> None:
        async with contextlib.aclosing(typist.events()) as items:
            async for item in items:
                if isinstance(item, Reset):  # connected
                    # presence is announced by the presence worker, typing at once: one order
                    while not any(isinstance(seen, Signal) and seen.type == "presence"
                                  for seen in received):
                        await asyncio.sleep(0.02)
                    assert await typist.typing(chat) is True
                    assert await typist.typing(chat) is False  # throttled in the client
                    while not any(isinstance(seen, Signal) and seen.type == "typing"
                                  for seen in received):
                        await asyncio.sleep(0.02)
                    await publish_to(hub, [b], "test.done")

    async with asyncio.timeout(20):
        listening = asyncio.create_task(listen())
        while listener.connects == 0:
            await asyncio.sleep(0.02)
        typing = asyncio.create_task(type_once())
        await listening
        await typist.close()
        await typing
    await listener.close()
    assert [type(item) for item in received] == [Reset, Signal, Signal, Event]
    assert received[1] == Signal("presence", {"chat_id": chat, "user_id": a, "online": True})
    assert received[2] == Signal("typing", {"chat_id": chat, "user_id": a})


async def test_a_stream_gets_signals_without_ids_and_a_resume_replays_only_events(
        hub: RunningHub) -> None:
    (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
    chat = await make_chat(hub.http, a_token, [b])
    async with open_stream(hub.http, b_token) as stream:
        epoch, start = stream.welcome["epoch"], stream.welcome["last_event_id"]
        sock_a = await connect(hub.ws_url, a_token)
        online = await stream.next()
        assert online == Message("presence", {"type": "presence", "chat_id": chat, "user_id": a,
                                              "online": True}, None)
        await publish_to(hub, [b], "test.one", {"n": 1})
        await sock_a.send({"type": "typing", "chat_id": chat})
        await publish_to(hub, [b], "test.two", {"n": 2})
        messages = [await stream.next() for _ in range(3)]  # signals and events: any order
        await sock_a.close()
        offline = await stream.next()
        assert offline == Message("presence", {"type": "presence", "chat_id": chat, "user_id": a,
                                               "online": False}, None)
        await stream.silent(0.3)
    signals = [message for message in messages if message.id is None]
    events = [message for message in messages if message.id is not None]
    assert signals == [Message("typing", {"type": "typing", "chat_id": chat, "user_id": a}, None)]
    assert [(m.id, m.event, m.data["id"]) for m in events] == [
        (f"{epoch}:{start + 1}", "test.one", start + 1),
        (f"{epoch}:{start + 2}", "test.two", start + 2)]  # consecutive: no signal took an id

    # what an EventSource sends after that stream: the id of its last message with one
    resume = {"Last-Event-ID": f"{epoch}:{start}"}
    async with open_stream(hub.http, b_token, headers=resume) as resumed:
        assert resumed.welcome["recovered"] is True
        replayed = await resumed.events(2)
        assert [(m.id, m.event) for m in replayed] == [(f"{epoch}:{start + 1}", "test.one"),
                                                      (f"{epoch}:{start + 2}", "test.two")]
        await resumed.silent(0.3)  # no signal replayed
    async with open_stream(hub.http, b_token, headers={"Last-Event-ID": events[-1].id or ""}) as last:
        assert last.welcome["recovered"] is True and last.welcome["last_event_id"] == start + 2
        await last.silent(0.3)


async def test_with_presence_off_nobody_is_announced_or_shown_and_typing_still_works(
        settings: Settings) -> None:
    async with serve_hub(dataclasses.replace(settings, presence=False)) as hub:
        (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
        chat = await make_chat(hub.http, a_token, [b])
        sock_b = await connect(hub.ws_url, b_token)
        sock_a = await connect(hub.ws_url, a_token)
        presence = await hub.http.get(f"{CHATS}/{chat}/presence", headers=bearer(b_token))
        assert presence.status_code == 200 and presence.json() == {"online": []}
        await sock_a.send({"type": "typing", "chat_id": chat})
        assert await sock_b.next() == {"type": "typing", "chat_id": chat, "user_id": a}
        await sock_a.close()
        await sock_b.silent(1.5)  # neither online nor offline was announced
        await sock_b.close()
