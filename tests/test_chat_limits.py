"""Chat abuse limits (protocol §6) against a real hub, on SQLite and on PostgreSQL + Redis:
leaving a chat, blocking, the member cap and the posting rate.

Which events each call wrote is checked through each user's stream history; live delivery of
`chat.member_left` is in `test_chat_live.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from chat.models import Chat, ChatMember, Message
from hub.db import Database
from hub.settings import Settings
from tests.conftest import RunningHub, register, serve_hub
from tests.test_chat_api import CHATS, assert_error, create_chat, events_of, post, unread

BLOCKS = "/api/v1/blocks"
MAX_MEMBERS = 3
BURST = 20
RATE = 0.25  # one post per 4 s: the 20 of the burst never earn a 21st, even on a loaded machine


@pytest.fixture
async def limited_hub(settings: Settings) -> AsyncIterator[RunningHub]:
    limited = replace(settings, chat_max_members=MAX_MEMBERS, chat_post_rate=RATE,
                      chat_post_burst=BURST)
    async with serve_hub(limited) as running:
        yield running


async def _rows(hub: RunningHub, chat_id: int) -> tuple[int, int, int]:
    """(chats, members, messages) rows of the chat, read from the database itself."""
    db = Database(hub.settings.database_url)
    db.open()
    try:
        async with db.sessions() as session:
            return tuple([  # type: ignore[return-value]
                await session.scalar(select(func.count()).select_from(model).where(column == chat_id))
                for model, column in ((Chat, Chat.id), (ChatMember, ChatMember.chat_id),
                                      (Message, Message.chat_id))])
    finally:
        await db.close()


async def test_leave(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob, carol, eve = [await register(hub.http) for _ in range(4)]
        chat = await create_chat(hub.http, alice, [bob, carol])
        cid = chat["id"]
        first = (await post(hub.http, alice, cid, "before")).json()

        left = await hub.http.delete(f"{CHATS}/{cid}/members/me", headers=bob.headers)
        assert left.status_code == 204, left.text
        assert left.content == b""
        event = {"chat_id": cid, "user_id": bob.id}
        for member in (alice, carol):
            assert [e["data"] for e in await events_of(hub.http, member, "chat.member_left")] == [event]
        assert await events_of(hub.http, bob, "chat.member_left") == []

        # The leaver is a stranger now: nothing of the chat, nothing more from it.
        after = (await post(hub.http, carol, cid, "after")).json()
        assert [e["data"]["text"] for e in await events_of(hub.http, bob, "chat.message")] == ["before"]
        assert [e["data"]["text"] for e in await events_of(hub.http, alice, "chat.message")] == \
            ["before", "after"]
        assert (await hub.http.get(CHATS, headers=bob.headers)).json() == {"items": []}
        for method, path, body in (
                ("GET", f"{CHATS}/{cid}", None), ("GET", f"{CHATS}/{cid}/messages", None),
                ("POST", f"{CHATS}/{cid}/messages", {"text": "hi"}),
                ("POST", f"{CHATS}/{cid}/read", {"message_id": after["id"]}),
                ("POST", f"{CHATS}/{cid}/members", {"user_id": eve.id}),
                ("DELETE", f"{CHATS}/{cid}/members/me", None)):
            assert_error(await hub.http.request(method, path, json=body, headers=bob.headers),
                         404, "not_found")
        members = (await hub.http.get(f"{CHATS}/{cid}", headers=alice.headers)).json()["members"]
        assert [m["user_id"] for m in members] == sorted([alice.id, carol.id])

        # Added again, they join as a newcomer: the history readable, nothing unread.
        readded = await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": bob.id},
                                      headers=alice.headers)
        assert readded.status_code == 201, readded.text
        assert await unread(hub.http, bob, cid) == 0
        history = (await hub.http.get(f"{CHATS}/{cid}/messages", headers=bob.headers)).json()
        assert [m["id"] for m in history["items"]] == [after["id"], first["id"]]

        # Strangers, missing chats and anonymous callers.
        for who, path in ((eve, f"{CHATS}/{cid}/members/me"), (alice, f"{CHATS}/{2**31 - 2}/members/me"),
                          (alice, f"{CHATS}/0/members/me"), (alice, f"{CHATS}/{2**40}/members/me")):
            assert_error(await hub.http.delete(path, headers=who.headers), 404, "not_found")
        assert_error(await hub.http.delete(f"{CHATS}/{cid}/members/me"), 401, "unauthorized")
        assert await events_of(hub.http, eve) == []


async def test_the_last_member_to_leave_deletes_the_chat(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob = await register(hub.http), await register(hub.http)
        cid = (await create_chat(hub.http, alice, [bob]))["id"]
        for text in ("one", "two"):
            assert (await post(hub.http, bob, cid, text)).status_code == 201
        assert (await hub.http.delete(f"{CHATS}/{cid}/members/me", headers=alice.headers)).status_code == 204
        assert await _rows(hub, cid) == (1, 1, 2)
        assert (await hub.http.delete(f"{CHATS}/{cid}/members/me", headers=bob.headers)).status_code == 204
        assert await _rows(hub, cid) == (0, 0, 0)
        # Nobody is left to tell: the last leave emits nothing.
        assert [e["data"] for e in await events_of(hub.http, bob, "chat.member_left")] == \
            [{"chat_id": cid, "user_id": alice.id}]
        assert await events_of(hub.http, alice, "chat.member_left") == []


async def test_blocks(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob, carol = [await register(hub.http) for _ in range(3)]
        shared = (await create_chat(hub.http, bob, [carol]))["id"]
        for _ in range(2):  # blocking twice is no change
            blocked = await hub.http.post(BLOCKS, json={"user_id": bob.id}, headers=alice.headers)
            assert blocked.status_code == 204, blocked.text
            assert blocked.content == b""
        listed = await hub.http.get(BLOCKS, headers=alice.headers)
        assert listed.json() == {"items": [{"user_id": bob.id, "username": bob.username}]}
        assert (await hub.http.get(BLOCKS, headers=bob.headers)).json() == {"items": []}

        # Bob cannot put alice in a chat, by creating or by adding; nothing is written.
        events_before = await events_of(hub.http, bob)
        refused = assert_error(await hub.http.post(
            CHATS, json={"title": "x", "member_ids": [carol.id, alice.id]}, headers=bob.headers),
            403, "forbidden")
        assert str(alice.id) in refused["detail"]
        assert_error(await hub.http.post(f"{CHATS}/{shared}/members", json={"user_id": alice.id},
                                         headers=bob.headers), 403, "forbidden")
        assert await events_of(hub.http, bob) == events_before
        assert await events_of(hub.http, alice) == []
        assert len((await hub.http.get(CHATS, headers=bob.headers)).json()["items"]) == 1

        # Everyone else works as before: bob with carol, carol with alice, alice with bob.
        assert (await hub.http.post(CHATS, json={"title": "y", "member_ids": [carol.id]},
                                    headers=bob.headers)).status_code == 201
        added = await hub.http.post(f"{CHATS}/{shared}/members", json={"user_id": alice.id},
                                    headers=carol.headers)
        assert added.status_code == 201, added.text
        assert (await hub.http.post(CHATS, json={"title": "z", "member_ids": [bob.id]},
                                    headers=alice.headers)).status_code == 201

        # Unblocked, bob may add alice again.
        for _ in range(2):
            unblocked = await hub.http.delete(f"{BLOCKS}/{bob.id}", headers=alice.headers)
            assert unblocked.status_code == 204, unblocked.text
        assert (await hub.http.get(BLOCKS, headers=alice.headers)).json() == {"items": []}
        assert (await hub.http.post(CHATS, json={"title": "w", "member_ids": [alice.id]},
                                    headers=bob.headers)).status_code == 201


async def test_block_validation(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice = await register(hub.http)
        body = assert_error(await hub.http.post(BLOCKS, json={"user_id": alice.id},
                                                headers=alice.headers), 422, "invalid")
        assert "user_id" in body["fields"]
        body = assert_error(await hub.http.post(BLOCKS, json={"user_id": 987654321},
                                                headers=alice.headers), 422, "invalid")
        assert "987654321" in body["fields"]["user_id"]
        for bad in ({}, {"user_id": "5"}, {"user_id": 0}, {"user_id": 2**31}, {"user_id": 5, "x": 1}):
            assert_error(await hub.http.post(BLOCKS, json=bad, headers=alice.headers), 422, "invalid")
        for path in (f"{BLOCKS}/987654321", f"{BLOCKS}/0", f"{BLOCKS}/{2**40}", f"{BLOCKS}/abc"):
            assert_error(await hub.http.delete(path, headers=alice.headers), 404, "not_found")
        assert_error(await hub.http.post(BLOCKS, json={"user_id": alice.id}), 401, "unauthorized")
        assert_error(await hub.http.get(BLOCKS), 401, "unauthorized")
        assert_error(await hub.http.delete(f"{BLOCKS}/{alice.id}"), 401, "unauthorized")


async def test_member_cap(limited_hub: RunningHub) -> None:
    hub = limited_hub
    async with asyncio.timeout(60):
        alice, bob, carol, dave = [await register(hub.http) for _ in range(4)]
        body = assert_error(await hub.http.post(
            CHATS, json={"title": "x", "member_ids": [bob.id, carol.id, dave.id]}, headers=alice.headers),
            422, "invalid")
        assert str(MAX_MEMBERS) in body["fields"]["member_ids"]
        assert await events_of(hub.http, bob) == []

        cid = (await create_chat(hub.http, alice, [bob, carol]))["id"]  # exactly the cap
        body = assert_error(await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": dave.id},
                                                headers=alice.headers), 422, "invalid")
        assert str(MAX_MEMBERS) in body["fields"]["user_id"]
        assert await events_of(hub.http, dave) == []
        assert len(await events_of(hub.http, alice, "chat.member_added")) == 0

        # One leaves, one more fits.
        assert (await hub.http.delete(f"{CHATS}/{cid}/members/me", headers=carol.headers)).status_code == 204
        added = await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": dave.id},
                                    headers=alice.headers)
        assert added.status_code == 201, added.text
        assert len(added.json()["members"]) == MAX_MEMBERS


async def test_posting_rate(limited_hub: RunningHub) -> None:
    hub = limited_hub
    async with asyncio.timeout(60):
        alice, bob = await register(hub.http), await register(hub.http)
        cid = (await create_chat(hub.http, alice, [bob]))["id"]
        for n in range(BURST):
            assert (await post(hub.http, alice, cid, f"m{n}")).status_code == 201
        twenty_first = await post(hub.http, alice, cid, "m0-again", key="k-ok")
        refused = assert_error(twenty_first, 429, "rate_limited")
        retry_after = int(twenty_first.headers["Retry-After"])
        assert 1 <= retry_after <= 1 / RATE
        assert str(retry_after) in refused["detail"]

        # The refused post wrote nothing: no message, no event, no idempotency key.
        history = (await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 100},
                                      headers=bob.headers)).json()["items"]
        assert len(history) == BURST
        assert len(await events_of(hub.http, bob, "chat.message")) == BURST
        # The limit is per user: bob still posts.
        assert (await post(hub.http, bob, cid, "bob")).status_code == 201

        await asyncio.sleep(retry_after)
        accepted = await post(hub.http, alice, cid, "m0-again", key="k-ok")
        assert accepted.status_code == 201, accepted.text
        assert "Idempotent-Replayed" not in accepted.headers  # the key was still free
        # A replay of an accepted post is not a new post: it is not refused.
        replayed = await post(hub.http, alice, cid, "m0-again", key="k-ok")
        assert replayed.status_code == 201
        assert replayed.headers["Idempotent-Replayed"] == "true"
        assert replayed.content == accepted.content
        assert_error(await post(hub.http, alice, cid, "one too many"), 429, "rate_limited")
        texts = [e["data"]["text"] for e in await events_of(hub.http, bob, "chat.message")]
        assert texts == [f"m{n}" for n in range(BURST)] + ["bob", "m0-again"]
