"""Live delivery of chat events over `/ws` (protocol §4-§6), on SQLite and on PostgreSQL + Redis.

Each user's stream is ordered, so after the actions under test a final `test.barrier` event is
published to everyone: once a connection sees it, everything meant for that connection before
it has arrived, and the frames received until then are exactly what it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import Account, RunningHub, register

CHATS = "/api/v1/chats"


class Listener:
    """One authenticated WebSocket of one user."""

    def __init__(self, socket: ClientConnection, welcome: dict[str, Any]) -> None:
        self.socket = socket
        self.welcome = welcome

    async def until_barrier(self, barrier: str) -> list[tuple[str, Any]]:
        """(name, data) of every event before the barrier event named `barrier`."""
        seen: list[tuple[str, Any]] = []
        last_id = self.welcome["last_event_id"]
        while True:
            frame = orjson.loads(await self.socket.recv())
            if frame["type"] in ("presence", "typing"):
                continue  # signals of members coming and going (§11): not part of the stream
            assert frame["type"] == "event", frame
            assert frame["id"] == last_id + 1, (frame, last_id)  # none skipped, none repeated
            last_id = frame["id"]
            if frame["name"] == barrier:
                self.welcome["last_event_id"] = last_id
                return seen
            seen.append((frame["name"], frame["data"]))


@contextlib.asynccontextmanager
async def listening(hub: RunningHub, account: Account) -> AsyncIterator[Listener]:
    async with connect(hub.ws_url, open_timeout=10, close_timeout=5) as socket:
        await socket.send(orjson.dumps({"type": "auth", "token": account.access_token}).decode())
        welcome = orjson.loads(await socket.recv())
        assert welcome["type"] == "welcome", welcome
        assert welcome["user_id"] == account.id
        yield Listener(socket, welcome)


async def barrier(hub: RunningHub, accounts: list[Account], name: str) -> None:
    response = await hub.http.post(
        "/api/v1/publish", json={"user_ids": [a.id for a in accounts], "name": name},
        headers={"Authorization": f"Bearer {hub.settings.hub_api_key}"})
    assert response.status_code == 202, response.text


async def received(hub: RunningHub, listeners: dict[str, Listener], accounts: list[Account],
                   name: str) -> dict[str, list[tuple[str, Any]]]:
    await barrier(hub, accounts, name)
    return {who: await listener.until_barrier(name) for who, listener in listeners.items()}


async def test_each_chat_event_reaches_exactly_its_users(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob, carol, eve = [await register(hub.http) for _ in range(4)]
        everyone = [alice, bob, carol, eve]
        async with contextlib.AsyncExitStack() as stack:
            ws = {"alice": await stack.enter_async_context(listening(hub, alice)),
                  "alice2": await stack.enter_async_context(listening(hub, alice)),
                  "bob": await stack.enter_async_context(listening(hub, bob)),
                  "carol": await stack.enter_async_context(listening(hub, carol)),
                  "eve": await stack.enter_async_context(listening(hub, eve))}

            created = await hub.http.post(CHATS, json={"title": "live", "member_ids": [bob.id]},
                                          headers=alice.headers)
            assert created.status_code == 201
            chat = created.json()
            got = await received(hub, ws, everyone, "test.barrier1")
            assert got == {"alice": [("chat.created", chat)], "alice2": [("chat.created", chat)],
                           "bob": [("chat.created", chat)], "carol": [], "eve": []}

            posted = await hub.http.post(f"{CHATS}/{chat['id']}/messages", json={"text": "hi"},
                                         headers=alice.headers)
            assert posted.status_code == 201
            message = posted.json()
            got = await received(hub, ws, everyone, "test.barrier2")
            assert got == {"alice": [("chat.message", message)], "alice2": [("chat.message", message)],
                           "bob": [("chat.message", message)], "carol": [], "eve": []}

            added = await hub.http.post(f"{CHATS}/{chat['id']}/members", json={"user_id": carol.id},
                                        headers=bob.headers)
            assert added.status_code == 201
            event = ("chat.member_added", {"chat_id": chat["id"], "user_id": carol.id})
            got = await received(hub, ws, everyone, "test.barrier3")
            assert got == {"alice": [event], "alice2": [event], "bob": [event], "carol": [event],
                           "eve": []}

            read = await hub.http.post(f"{CHATS}/{chat['id']}/read",
                                       json={"message_id": message["id"]}, headers=bob.headers)
            assert read.status_code == 204
            event = ("chat.read", {"chat_id": chat["id"], "user_id": bob.id, "message_id": message["id"]})
            got = await received(hub, ws, everyone, "test.barrier4")
            assert got == {"alice": [event], "alice2": [event], "bob": [], "carol": [event], "eve": []}

            # Refused calls and an idempotent retry publish nothing.
            headers = {**alice.headers, "Idempotency-Key": "live-1"}
            first = await hub.http.post(f"{CHATS}/{chat['id']}/messages", json={"text": "once"},
                                        headers=headers)
            assert first.status_code == 201
            retried = await hub.http.post(f"{CHATS}/{chat['id']}/messages", json={"text": "once"},
                                          headers=headers)
            assert retried.content == first.content
            refused = [
                await hub.http.post(f"{CHATS}/{chat['id']}/messages", json={"text": "x"},
                                    headers=eve.headers),
                await hub.http.post(f"{CHATS}/{chat['id']}/members", json={"user_id": bob.id},
                                    headers=alice.headers),
                await hub.http.post(f"{CHATS}/{chat['id']}/read", json={"message_id": message["id"]},
                                    headers=bob.headers),  # not forward: no event
                await hub.http.post(f"{CHATS}/{chat['id']}/messages", json={"text": "\x00"},
                                    headers=alice.headers),
            ]
            assert [r.status_code for r in refused] == [404, 409, 204, 422]
            once = ("chat.message", first.json())
            got = await received(hub, ws, everyone, "test.barrier5")
            assert got == {"alice": [once], "alice2": [once], "bob": [once], "carol": [once], "eve": []}


async def test_messages_arrive_in_order_under_concurrent_posting(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        members = [await register(hub.http) for _ in range(4)]
        owner = members[0]
        cid = (await hub.http.post(CHATS, json={"title": "busy", "member_ids": [m.id for m in members]},
                                   headers=owner.headers)).json()["id"]
        async with contextlib.AsyncExitStack() as stack:
            ws = {str(m.id): await stack.enter_async_context(listening(hub, m)) for m in members}

            async def chatter(sender: Account) -> list[int]:
                ids = []
                for n in range(5):
                    response = await hub.http.post(f"{CHATS}/{cid}/messages",
                                                   json={"text": f"{sender.id}:{n}"}, headers=sender.headers)
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])
                return ids

            posted = sorted(i for ids in await asyncio.gather(*(chatter(m) for m in members)) for i in ids)
            got = await received(hub, ws, members, "test.barrier")
        for events in got.values():
            # Every member sees all 20 messages, in the chat's order (ids increase with commits).
            assert [data["id"] for _, data in events] == posted
        history = (await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 100},
                                      headers=owner.headers)).json()["items"]
        assert [m["id"] for m in history] == posted[::-1]


async def test_a_leaver_gets_nothing_more_of_the_chat(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob, carol = [await register(hub.http) for _ in range(3)]
        everyone = [alice, bob, carol]
        cid = (await hub.http.post(CHATS, json={"title": "leaving", "member_ids": [bob.id, carol.id]},
                                   headers=alice.headers)).json()["id"]
        async with contextlib.AsyncExitStack() as stack:
            ws = {"alice": await stack.enter_async_context(listening(hub, alice)),
                  "bob": await stack.enter_async_context(listening(hub, bob)),
                  "bob2": await stack.enter_async_context(listening(hub, bob)),
                  "carol": await stack.enter_async_context(listening(hub, carol))}

            left = await hub.http.delete(f"{CHATS}/{cid}/members/me", headers=bob.headers)
            assert left.status_code == 204, left.text
            event = ("chat.member_left", {"chat_id": cid, "user_id": bob.id})
            got = await received(hub, ws, everyone, "test.barrier1")
            assert got == {"alice": [event], "bob": [], "bob2": [], "carol": [event]}

            posted = await hub.http.post(f"{CHATS}/{cid}/messages", json={"text": "after"},
                                         headers=carol.headers)
            assert posted.status_code == 201
            message = ("chat.message", posted.json())
            got = await received(hub, ws, everyone, "test.barrier2")
            assert got == {"alice": [message], "bob": [], "bob2": [], "carol": [message]}
            gone = await hub.http.get(f"{CHATS}/{cid}", headers=bob.headers)
            assert gone.status_code == 404


async def test_a_member_added_during_posting_gets_exactly_the_messages_after_joining(
        hub: RunningHub) -> None:
    """Posts and an add race on one chat: the newcomer gets every message numbered after the
    join (its unread count says how many) and none before, whatever the interleaving. A post
    that waited for the add's chat lock reads the members after it, never a snapshot from
    before (chat/queries.py: the member ids come in the statement after the lock)."""
    async with asyncio.timeout(60):
        alice, bob, carol = [await register(hub.http) for _ in range(3)]
        cid = (await hub.http.post(CHATS, json={"title": "joining", "member_ids": [bob.id]},
                                   headers=alice.headers)).json()["id"]
        async with listening(hub, carol) as listener:

            async def chatter(sender: Account) -> None:
                for n in range(15):
                    response = await hub.http.post(f"{CHATS}/{cid}/messages",
                                                   json={"text": f"{sender.id}:{n}"}, headers=sender.headers)
                    assert response.status_code == 201, response.text

            async def add_carol() -> None:
                await asyncio.sleep(0.05)
                added = await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": carol.id},
                                            headers=bob.headers)
                assert added.status_code == 201, added.text

            await asyncio.gather(chatter(alice), chatter(bob), add_carol())
            got = (await received(hub, {"carol": listener}, [carol], "test.barrier"))["carol"]
        chat = (await hub.http.get(f"{CHATS}/{cid}", headers=carol.headers)).json()
        history = (await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 100},
                                      headers=carol.headers)).json()["items"]
        after_joining = [m["id"] for m in history[:chat["unread_count"]]][::-1]
        assert [data["id"] for name, data in got if name == "chat.message"] == after_joining
