"""Chat REST calls (protocol §6) against a real hub, on SQLite and on PostgreSQL + Redis.

Which events each call wrote is checked through each user's stream history (`GET
/api/v1/events`); live delivery over `/ws` is covered by `test_chat_live.py`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from hub.db import Database, utcnow
from hub.models import IdempotencyKey
from tests.conftest import Account, RunningHub, register

CHATS = "/api/v1/chats"


async def create_chat(http: httpx.AsyncClient, owner: Account, members: list[Account],
                      title: str = "room") -> dict[str, Any]:
    response = await http.post(CHATS, json={"title": title, "member_ids": [m.id for m in members]},
                               headers=owner.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def post(http: httpx.AsyncClient, sender: Account, chat_id: int, text: str,
               key: str | None = None) -> httpx.Response:
    headers = dict(sender.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await http.post(f"{CHATS}/{chat_id}/messages", json={"text": text}, headers=headers)


async def events_of(http: httpx.AsyncClient, user: Account, name: str | None = None) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/events", params={"limit": 500}, headers=user.headers)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    return [e for e in items if name is None or e["name"] == name]


async def unread(http: httpx.AsyncClient, user: Account, chat_id: int) -> int:
    response = await http.get(f"{CHATS}/{chat_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["unread_count"])


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


async def test_create_chat_shape_members_and_event(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice, bob, carol = [await register(hub.http) for _ in range(3)]
        chat = await create_chat(hub.http, alice, [bob, bob, alice], title="  Lunch  ")
        assert set(chat) == {"id", "title", "created_at", "members", "unread_count"}
        assert chat["title"] == "Lunch"
        assert chat["unread_count"] == 0
        assert chat["created_at"].endswith("Z")
        assert chat["members"] == sorted(
            [{"user_id": alice.id, "username": alice.username},
             {"user_id": bob.id, "username": bob.username}], key=lambda m: m["user_id"])

        for member in (alice, bob):
            got = await hub.http.get(f"{CHATS}/{chat['id']}", headers=member.headers)
            assert got.status_code == 200
            assert got.json() == chat
            created = await events_of(hub.http, member, "chat.created")
            assert [e["data"] for e in created] == [chat]
        assert await events_of(hub.http, carol) == []


async def test_create_chat_alone_and_validation(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice = await register(hub.http)
        solo = await hub.http.post(CHATS, json={"title": "notes"}, headers=alice.headers)
        assert solo.status_code == 201
        assert [m["user_id"] for m in solo.json()["members"]] == [alice.id]

        body = assert_error(await hub.http.post(
            CHATS, json={"title": "x", "member_ids": [alice.id, 987654321, 987654322]},
            headers=alice.headers), 422, "invalid")
        assert "987654321" in body["detail"]
        assert "987654322" in body["detail"]
        assert "member_ids" in body["fields"]

        bad_bodies: list[Any] = [
            {"title": ""}, {"title": "   "}, {"title": "x" * 101}, {"title": "a\nb"},
            {"title": "ok", "member_ids": ["1"]}, {"title": "ok", "member_ids": [0]},
            {"title": "ok", "member_ids": [2**31]}, {"title": "ok", "member_ids": 5},
            {"title": "ok", "extra": 1}, {"member_ids": []}, [], {"title": 5},
            {"title": "ok", "member_ids": list(range(1, 1002))},
        ]
        for bad in bad_bodies:
            assert_error(await hub.http.post(CHATS, json=bad, headers=alice.headers), 422, "invalid")
        padded = await hub.http.post(CHATS, json={"title": " " + "x" * 100 + " "}, headers=alice.headers)
        assert padded.status_code == 201
        assert_error(await hub.http.post(CHATS, content=b"{not json", headers={
            **alice.headers, "Content-Type": "application/json"}), 422, "invalid")
        assert_error(await hub.http.post(CHATS, content=b'{"title":"x"}', headers={
            **alice.headers, "Content-Type": "text/plain"}), 415, "unsupported_media_type")
        assert_error(await hub.http.post(CHATS, json={"title": "x"}), 401, "unauthorized")
        assert_error(await hub.http.get(CHATS, headers={"Authorization": "Bearer nope"}),
                     401, "unauthorized")


async def test_non_members_learn_nothing(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice, bob, eve = [await register(hub.http) for _ in range(3)]
        chat = await create_chat(hub.http, alice, [bob])
        cid = chat["id"]
        message = (await post(hub.http, alice, cid, "secret")).json()
        calls = [
            ("GET", f"{CHATS}/{cid}", None),
            ("GET", f"{CHATS}/{cid}/messages", None),
            ("POST", f"{CHATS}/{cid}/messages", {"text": "hi"}),
            ("POST", f"{CHATS}/{cid}/members", {"user_id": eve.id}),
            ("POST", f"{CHATS}/{cid}/read", {"message_id": message["id"]}),
        ]
        missing = 2**31 - 2
        for method, path, body in calls:
            stranger = await hub.http.request(method, path, json=body, headers=eve.headers)
            nowhere = await hub.http.request(method, path.replace(f"/{cid}", f"/{missing}"),
                                             json=body, headers=eve.headers)
            assert_error(stranger, 404, "not_found")
            assert_error(nowhere, 404, "not_found")
            # The same words for "exists but not yours" and "does not exist", bar the id.
            assert stranger.json()["detail"].replace(str(cid), "N") == \
                nowhere.json()["detail"].replace(str(missing), "N")
        listed = await hub.http.get(CHATS, headers=eve.headers)
        assert listed.json() == {"items": []}
        for path in (f"{CHATS}/{2**40}", f"{CHATS}/0/messages"):
            assert_error(await hub.http.get(path, headers=eve.headers), 404, "not_found")
        assert await events_of(hub.http, eve) == []
        assert len(await events_of(hub.http, bob, "chat.message")) == 1


async def test_add_member(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice, bob, carol, eve = [await register(hub.http) for _ in range(4)]
        chat = await create_chat(hub.http, alice, [bob])
        cid = chat["id"]
        for text in ("one", "two"):
            assert (await post(hub.http, alice, cid, text)).status_code == 201

        added = await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": carol.id},
                                    headers=bob.headers)
        assert added.status_code == 201, added.text
        assert [m["user_id"] for m in added.json()["members"]] == sorted([alice.id, bob.id, carol.id])
        assert {"user_id": carol.id, "username": carol.username} in added.json()["members"]

        for member in (alice, bob, carol):
            got = await events_of(hub.http, member, "chat.member_added")
            assert [e["data"] for e in got] == [{"chat_id": cid, "user_id": carol.id}]
        assert await events_of(hub.http, eve) == []
        # A newcomer has nothing unread from before they joined, but sees the history.
        assert await unread(hub.http, carol, cid) == 0
        history = await hub.http.get(f"{CHATS}/{cid}/messages", headers=carol.headers)
        assert [m["text"] for m in history.json()["items"]] == ["two", "one"]
        assert (await post(hub.http, alice, cid, "three")).status_code == 201
        assert await unread(hub.http, carol, cid) == 1

        assert_error(await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": carol.id},
                                         headers=alice.headers), 409, "conflict")
        assert_error(await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": alice.id},
                                         headers=alice.headers), 409, "conflict")
        unknown = assert_error(await hub.http.post(
            f"{CHATS}/{cid}/members", json={"user_id": 987654321}, headers=alice.headers), 422, "invalid")
        assert "user_id" in unknown["fields"]
        assert_error(await hub.http.post(f"{CHATS}/{cid}/members", json={"user_id": eve.id},
                                         headers=eve.headers), 404, "not_found")
        for bad in ({"user_id": "5"}, {"user_id": 0}, {}, {"user_id": eve.id, "x": 1}):
            assert_error(await hub.http.post(f"{CHATS}/{cid}/members", json=bad,
                                             headers=alice.headers), 422, "invalid")
        eve_chats = await hub.http.get(CHATS, headers=eve.headers)
        assert eve_chats.json() == {"items": []}


async def test_post_message_shape_event_and_text_rules(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice, bob, eve = [await register(hub.http) for _ in range(3)]
        cid = (await create_chat(hub.http, alice, [bob]))["id"]
        response = await post(hub.http, alice, cid, "  hello\tworld\n  ")
        assert response.status_code == 201, response.text
        message = response.json()
        assert set(message) == {"id", "chat_id", "sender_id", "sender_username", "text", "created_at"}
        assert message["chat_id"] == cid
        assert message["sender_id"] == alice.id
        assert message["sender_username"] == alice.username
        assert message["text"] == "hello\tworld"
        assert message["created_at"].endswith("Z")
        for member in (alice, bob):  # the sender's own stream gets it too
            assert [e["data"] for e in await events_of(hub.http, member, "chat.message")] == [message]
        assert await events_of(hub.http, eve) == []

        longest = await post(hub.http, bob, cid, " " + "é" * 4000 + "\n")
        assert longest.status_code == 201
        assert longest.json()["text"] == "é" * 4000
        multiline = await post(hub.http, bob, cid, "line 1\nline 2")
        assert multiline.json()["text"] == "line 1\nline 2"
        for bad in ("", "   \n\t ", "x" * 4001, "nul\x00", "cr\r\nlf", "bell\x07", "del\x7f",
                    "c1\x85", "esc\x1b[31m"):
            body = assert_error(await post(hub.http, alice, cid, bad), 422, "invalid")
            assert "text" in body["fields"]
        for bad_body in ({}, {"text": 5}, {"text": "x", "y": 1}, {"text": None}):
            assert_error(await hub.http.post(f"{CHATS}/{cid}/messages", json=bad_body,
                                             headers=alice.headers), 422, "invalid")
        huge = await hub.http.post(f"{CHATS}/{cid}/messages", json={"text": "x" * (1024 * 1024)},
                                   headers=alice.headers)
        assert_error(huge, 413, "too_large")
        lone_surrogate = b'{"text": "a\\ud800b"}'
        response = await hub.http.post(f"{CHATS}/{cid}/messages", content=lone_surrogate,
                                       headers={**alice.headers, "Content-Type": "application/json"})
        assert_error(response, 422, "invalid")
        listed = await hub.http.get(f"{CHATS}/{cid}/messages", headers=alice.headers)
        assert len(listed.json()["items"]) == 3


async def test_pagination_across_pages(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob = await register(hub.http), await register(hub.http)
        cid = (await create_chat(hub.http, alice, [bob]))["id"]
        other = (await create_chat(hub.http, bob, [alice]))["id"]
        ids, noise = [], []
        for n in range(7):
            ids.append((await post(hub.http, alice if n % 2 else bob, cid, f"m{n}")).json()["id"])
            noise.append((await post(hub.http, alice, other, f"noise {n}")).json()["id"])
        assert ids == sorted(ids)

        pages: list[list[int]] = []
        before: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 3}
            if before is not None:
                params["before_id"] = before
            page = await hub.http.get(f"{CHATS}/{cid}/messages", params=params, headers=bob.headers)
            assert page.status_code == 200, page.text
            body = page.json()
            pages.append([m["id"] for m in body["items"]])
            assert all(m["chat_id"] == cid for m in body["items"])
            before = body["next_before_id"]
            if before is None:
                break
            assert before == body["items"][-1]["id"]
        assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]

        # A last page that is exactly full still ends with null.
        exact = await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 7}, headers=bob.headers)
        assert [m["id"] for m in exact.json()["items"]] == ids[::-1]
        assert exact.json()["next_before_id"] is None
        partial = await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 6}, headers=bob.headers)
        assert partial.json()["next_before_id"] == ids[1]
        oldest = await hub.http.get(f"{CHATS}/{cid}/messages", params={"before_id": ids[0]},
                                    headers=bob.headers)
        assert oldest.json() == {"items": [], "next_before_id": None}
        # An id that is not a message of this chat still works as a bound.
        for foreign, expected in ((noise[3], ids[3:0:-1]), (2**62, ids[6:3:-1])):
            page = await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 3, "before_id": foreign},
                                      headers=bob.headers)
            assert [m["id"] for m in page.json()["items"]] == expected
            assert page.json()["next_before_id"] == expected[-1]

        for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"before_id": 0},
                    {"before_id": "abc"}, {"before_id": ""}, {"limit": -1}):
            body = assert_error(await hub.http.get(f"{CHATS}/{cid}/messages", params=bad,
                                                   headers=bob.headers), 422, "invalid")
            assert set(body["fields"]) <= {"limit", "before_id"}
        hundred = await hub.http.get(f"{CHATS}/{cid}/messages", params={"limit": 100}, headers=bob.headers)
        assert hundred.status_code == 200


async def test_default_page_size_is_50(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice = await register(hub.http)
        cid = (await create_chat(hub.http, alice, []))["id"]
        for n in range(52):
            assert (await post(hub.http, alice, cid, f"m{n}")).status_code == 201
        page = (await hub.http.get(f"{CHATS}/{cid}/messages", headers=alice.headers)).json()
        assert len(page["items"]) == 50
        assert page["items"][0]["text"] == "m51"
        rest = (await hub.http.get(f"{CHATS}/{cid}/messages", params={"before_id": page["next_before_id"]},
                                   headers=alice.headers)).json()
        assert [m["text"] for m in rest["items"]] == ["m1", "m0"]
        assert rest["next_before_id"] is None


async def test_chat_list_order_and_unread_counts(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob, carol = [await register(hub.http) for _ in range(3)]
        first = (await create_chat(hub.http, alice, [bob], "first"))["id"]
        second = (await create_chat(hub.http, bob, [alice, carol], "second"))["id"]
        third = (await create_chat(hub.http, carol, [alice], "third"))["id"]

        async def listing(user: Account) -> list[tuple[int, int]]:
            response = await hub.http.get(CHATS, headers=user.headers)
            assert response.status_code == 200
            return [(c["id"], c["unread_count"]) for c in response.json()["items"]]

        assert await listing(alice) == [(third, 0), (second, 0), (first, 0)]
        assert await listing(bob) == [(second, 0), (first, 0)]

        for text in ("a", "b", "c"):
            await post(hub.http, bob, first, text)
        assert await listing(alice) == [(first, 3), (third, 0), (second, 0)]
        assert await listing(bob) == [(first, 0), (second, 0)]  # one's own messages are read

        last = None
        for text in ("x", "y"):
            last = (await post(hub.http, carol, second, text)).json()
        assert last is not None
        assert await listing(alice) == [(second, 2), (first, 3), (third, 0)]
        assert await listing(bob) == [(second, 2), (first, 0)]

        # Replying marks the chat read for the sender; the others' counts stay.
        await post(hub.http, alice, second, "reply")
        assert await listing(alice) == [(second, 0), (first, 3), (third, 0)]
        assert await listing(bob) == [(second, 3), (first, 0)]
        assert await listing(carol) == [(second, 1), (third, 0)]

        detail = (await hub.http.get(f"{CHATS}/{second}", headers=bob.headers)).json()
        assert detail["unread_count"] == 3
        assert [c for c in (await hub.http.get(CHATS, headers=bob.headers)).json()["items"]
                if c["id"] == second] == [detail]


async def test_mark_read(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob, carol, eve = [await register(hub.http) for _ in range(4)]
        cid = (await create_chat(hub.http, alice, [bob, carol]))["id"]
        other = (await create_chat(hub.http, alice, [bob]))["id"]
        ids = [(await post(hub.http, alice, cid, f"m{n}")).json()["id"] for n in range(4)]
        foreign = (await post(hub.http, alice, other, "elsewhere")).json()["id"]
        assert await unread(hub.http, bob, cid) == 4

        read = await hub.http.post(f"{CHATS}/{cid}/read", json={"message_id": ids[1]}, headers=bob.headers)
        assert read.status_code == 204
        assert read.content == b""
        assert await unread(hub.http, bob, cid) == 2
        # Only forward: reading an older message, or the same one again, changes nothing.
        for message_id in (ids[0], ids[1]):
            again = await hub.http.post(f"{CHATS}/{cid}/read", json={"message_id": message_id},
                                        headers=bob.headers)
            assert again.status_code == 204
        assert await unread(hub.http, bob, cid) == 2
        assert (await hub.http.post(f"{CHATS}/{cid}/read", json={"message_id": ids[3]},
                                    headers=bob.headers)).status_code == 204
        assert await unread(hub.http, bob, cid) == 0
        assert await unread(hub.http, carol, cid) == 4

        expected = [{"chat_id": cid, "user_id": bob.id, "message_id": ids[1]},
                    {"chat_id": cid, "user_id": bob.id, "message_id": ids[3]}]
        for member in (alice, carol):
            assert [e["data"] for e in await events_of(hub.http, member, "chat.read")] == expected
        assert await events_of(hub.http, bob, "chat.read") == []
        assert await events_of(hub.http, eve) == []

        for bad_id in (foreign, 2**62):
            body = assert_error(await hub.http.post(f"{CHATS}/{cid}/read", json={"message_id": bad_id},
                                                    headers=bob.headers), 422, "invalid")
            assert "message_id" in body["fields"]
        for bad in ({}, {"message_id": "1"}, {"message_id": 0}, {"message_id": 2**63}, {"message_id": 1.5}):
            assert_error(await hub.http.post(f"{CHATS}/{cid}/read", json=bad, headers=bob.headers),
                         422, "invalid")
        assert_error(await hub.http.post(f"{CHATS}/{cid}/read", json={"message_id": ids[3]},
                                         headers=eve.headers), 404, "not_found")
        assert_error(await hub.http.post(f"{CHATS}/{cid}/read", json={"message_id": ids[3]}),
                     401, "unauthorized")


async def test_idempotent_retry(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        alice, bob = await register(hub.http), await register(hub.http)
        cid = (await create_chat(hub.http, alice, [bob]))["id"]
        first = await post(hub.http, alice, cid, "once", key="k-1")
        assert first.status_code == 201
        retry = await post(hub.http, alice, cid, "once", key="k-1")
        assert retry.status_code == 201
        assert retry.content == first.content
        assert "Idempotent-Replayed" not in first.headers
        assert retry.headers["Idempotent-Replayed"] == "true"

        # Another user's identical key is theirs alone.
        bobs = await post(hub.http, bob, cid, "once", key="k-1")
        assert bobs.status_code == 201
        assert bobs.json()["id"] != first.json()["id"]
        reused = await post(hub.http, alice, cid, "different text", key="k-1")
        assert_error(reused, 409, "conflict")

        # Concurrent duplicates write one message.
        racers = await asyncio.gather(*(post(hub.http, alice, cid, "race", key="k-2") for _ in range(6)))
        assert {r.status_code for r in racers} == {201}
        assert len({r.content for r in racers}) == 1

        listed = (await hub.http.get(f"{CHATS}/{cid}/messages", headers=alice.headers)).json()["items"]
        assert [m["text"] for m in listed] == ["race", "once", "once"]
        for member in (alice, bob):
            messages = await events_of(hub.http, member, "chat.message")
            assert [e["data"]["text"] for e in messages] == ["once", "once", "race"]
        assert await unread(hub.http, bob, cid) == 1  # bob's own post read what came before

        assert (await post(hub.http, alice, cid, "x", key="k" * 255)).status_code == 201
        for bad_key in ("k" * 256, ""):
            body = assert_error(await post(hub.http, alice, cid, "x", key=bad_key), 422, "invalid")
            assert "Idempotency-Key" in body["fields"]


async def test_idempotency_key_expires_after_24_hours(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        alice = await register(hub.http)
        cid = (await create_chat(hub.http, alice, []))["id"]
        first = await post(hub.http, alice, cid, "again", key="old")
        db = Database(hub.settings.database_url)
        db.open()
        try:
            async with db.sessions.begin() as session:
                await session.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.scope == f"chat:{alice.id}", IdempotencyKey.key == "old")
                    .values(created_at=utcnow() - dt.timedelta(hours=24, seconds=1)))
        finally:
            await db.close()
        later = await post(hub.http, alice, cid, "again", key="old")
        assert later.status_code == 201
        assert "Idempotent-Replayed" not in later.headers
        assert later.json()["id"] > first.json()["id"]
        replayed = await post(hub.http, alice, cid, "again", key="old")
        assert replayed.content == later.content
        listed = (await hub.http.get(f"{CHATS}/{cid}/messages", headers=alice.headers)).json()
        assert [m["id"] for m in listed["items"]] == [later.json()["id"], first.json()["id"]]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_openapi_lists_every_chat_call(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        document = (await hub.http.get("/api/openapi.json")).json()
    paths = document["paths"]
    assert set(paths[CHATS]) == {"get", "post"}
    assert set(paths[CHATS + "/{chat_id}"]) == {"get"}
    assert set(paths[CHATS + "/{chat_id}/members"]) == {"post"}
    assert set(paths[CHATS + "/{chat_id}/messages"]) == {"get", "post"}
    assert set(paths[CHATS + "/{chat_id}/read"]) == {"post"}
    assert set(paths[CHATS + "/{chat_id}/members/me"]) == {"delete"}
    assert set(paths["/api/v1/blocks"]) == {"get", "post"}
    assert set(paths["/api/v1/blocks/{user_id}"]) == {"delete"}
    assert "429" in paths[CHATS + "/{chat_id}/messages"]["post"]["responses"]
    for path in (CHATS, CHATS + "/{chat_id}/members"):
        assert "403" in paths[path]["post"]["responses"]
    post_message = paths[CHATS + "/{chat_id}/messages"]["post"]
    assert "201" in post_message["responses"]
    assert "404" in post_message["responses"]
    assert any(p["name"] == "Idempotency-Key" for p in post_message["parameters"])
    listing = paths[CHATS + "/{chat_id}/messages"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"chat_id", "before_id", "limit"}
