"""Web Push (protocol §13) end to end: real hubs on PostgreSQL + Redis, and a push service
stand-in on 127.0.0.1 over HTTPS (tests/push_service.py) that checks VAPID and decrypts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from hub import push_store
from hub.push_crypto import generate_vapid_key, load_vapid_key, public_key_b64
from hub.settings import Settings
from tests.conftest import Account, RunningHub, backend_settings, free_port, register, serve_hub
from tests.push_service import PushService, Subscription, serve_push_service
from tests.wsutil import connect

SUBSCRIPTIONS = "/api/v1/push/subscriptions"
DELAY = 1.0
VAPID_KEY = generate_vapid_key()
PUBLIC_KEY = public_key_b64(load_vapid_key(VAPID_KEY))


@pytest.fixture
def push_settings(request: pytest.FixtureRequest) -> Settings:
    return replace(backend_settings("postgres", request), vapid_private_key=VAPID_KEY,
                   vapid_subject="mailto:ops@example.com", push_delay=DELAY,
                   push_allow_private=True)


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PushService]:
    async with serve_push_service(tmp_path, PUBLIC_KEY) as (stand_in, ca):
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the hub trusts the test CA, as deployed
        yield stand_in


@pytest.fixture
async def hub(push_settings: Settings, service: PushService) -> AsyncIterator[RunningHub]:
    async with serve_hub(push_settings) as running:
        yield running


async def subscribe(hub: RunningHub, account: Account, sub: Subscription) -> int:
    answer = await hub.http.post(SUBSCRIPTIONS, json=sub.json(), headers=account.headers)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def chat_of(hub: RunningHub, a: Account, b: Account) -> int:
    answer = await hub.http.post("/api/v1/chats", json={"title": "Lunch", "member_ids": [b.id]},
                                 headers=a.headers)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def post(hub: RunningHub, sender: Account, chat_id: int, text: str) -> int:
    answer = await hub.http.post(f"/api/v1/chats/{chat_id}/messages", json={"text": text},
                                 headers=sender.headers)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def quiet(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_unseen_chat_message_is_pushed_once(hub: RunningHub, service: PushService) -> None:
    await unseen_message_is_pushed_once(hub, service)


async def test_unseen_chat_message_is_pushed_once_on_sqlite(push_settings: Settings, service: PushService,
                                                            request: pytest.FixtureRequest,
                                                            sqlite_template: Path) -> None:
    """The single-process deployment (SQLite, in-process broker) pushes alike."""
    sqlite = replace(push_settings, database_url=backend_settings("sqlite", request).database_url,
                     redis_url=None)
    async with serve_hub(sqlite) as hub:
        await unseen_message_is_pushed_once(hub, service)


async def unseen_message_is_pushed_once(hub: RunningHub, service: PushService) -> None:
    alice, bob = await register(hub.http), await register(hub.http)
    sub = service.subscribe()
    await subscribe(hub, alice, sub)
    chat_id = await chat_of(hub, bob, alice)
    message_id = await post(hub, bob, chat_id, "are you coming?")
    [push] = await service.wait_accepted(1, sub)
    assert push.payload["title"] == bob.username
    assert push.payload["body"] == "are you coming?"
    event = push.payload["event"]
    assert event["name"] == "chat.message" and event["data"]["id"] == message_id
    assert push.headers["topic"] == f"chat-{chat_id}"
    assert 0 < int(push.headers["ttl"]) <= 86400
    await quiet(DELAY + 2)
    assert len(service.received) == 1  # chat.created is not in PUSH_EVENTS; the message once
    metrics = (await hub.http.get("/metrics")).text
    assert 'hub_push_sent_total{result="sent"} 1.0' in metrics


async def test_event_delivered_on_a_socket_is_not_pushed(hub: RunningHub, service: PushService) -> None:
    alice, bob = await register(hub.http), await register(hub.http)
    await subscribe(hub, alice, service.subscribe())
    chat_id = await chat_of(hub, bob, alice)
    socket = await connect(hub.ws_url, alice.access_token)
    try:
        await post(hub, bob, chat_id, "you are online")
        [frame] = await socket.events(1)
        assert frame["name"] == "chat.message"
        await quiet(DELAY + 3)
    finally:
        await socket.close()
    assert service.received == []
    # The control: once the socket is gone, the next message is pushed.
    await post(hub, bob, chat_id, "now you are not")
    [push] = await service.wait_accepted(1)
    assert push.payload["body"] == "now you are not"


async def test_read_marker_before_the_delay_prevents_the_push(push_settings: Settings,
                                                              service: PushService) -> None:
    async with serve_hub(replace(push_settings, push_delay=3.0)) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        await subscribe(hub, alice, service.subscribe())
        chat_id = await chat_of(hub, bob, alice)
        message_id = await post(hub, bob, chat_id, "read me elsewhere")
        read = await hub.http.post(f"/api/v1/chats/{chat_id}/read", json={"message_id": message_id},
                                   headers=alice.headers)
        assert read.status_code == 204, read.text
        await quiet(3.0 + 3)
        assert service.received == []


async def test_reading_a_pushed_chat_closes_its_notifications(hub: RunningHub,
                                                               service: PushService) -> None:
    """Read elsewhere after the push: each device gets a small push (Urgency low, the chat's
    Topic) saying which notifications to close; a read that reaches no pushed message, or
    reads again, sends none."""
    alice, bob = await register(hub.http), await register(hub.http)
    phone, tablet = service.subscribe(), service.subscribe()
    for sub in (phone, tablet):
        await subscribe(hub, alice, sub)
    chat_id = await chat_of(hub, bob, alice)
    first = await post(hub, bob, chat_id, "first")
    await service.wait_accepted(1, phone)
    await service.wait_accepted(1, tablet)
    second = await post(hub, bob, chat_id, "second")  # pushed too: the newest notice of the chat
    await service.wait_accepted(2, phone)
    await service.wait_accepted(2, tablet)

    async def read(message_id: int) -> None:
        answer = await hub.http.post(f"/api/v1/chats/{chat_id}/read",
                                     json={"message_id": message_id}, headers=alice.headers)
        assert answer.status_code == 204, answer.text

    await read(first)  # below the newest pushed message: the notification stays
    await quiet(DELAY + 1)
    assert len(service.received) == 4
    await read(second)
    for sub in (phone, tablet):
        close = (await service.wait_accepted(3, sub))[2]
        assert close.payload == {"close": f"chat-{chat_id}"}
        assert close.headers["urgency"] == "low" and close.headers["topic"] == f"chat-{chat_id}"
    await read(second)
    await quiet(DELAY + 1)
    assert len(service.received) == 6
    # Replying reads the chat too (posting moves the sender's read marker).
    await post(hub, bob, chat_id, "third")
    await service.wait_accepted(4, phone)
    await post(hub, alice, chat_id, "on my way")
    assert (await service.wait_accepted(5, phone))[4].payload == {"close": f"chat-{chat_id}"}
    assert (await service.wait_accepted(5, tablet))[4].payload == {"close": f"chat-{chat_id}"}
    metrics = (await hub.http.get("/metrics")).text
    assert 'hub_push_sent_total{result="sent"} 10.0' in metrics


async def test_a_push_read_before_it_is_sent_is_dropped(push_settings: Settings,
                                                        service: PushService) -> None:
    """One request at a time, each held 2 s: while the phone's push is in flight, the tablet's
    waits in the outbox; a read then drops the tablet's and sends both devices a close push."""
    service.hold = 2.0
    async with serve_hub(replace(push_settings, push_max_in_flight=1)) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        subs = [service.subscribe(), service.subscribe()]
        for sub in subs:
            await subscribe(hub, alice, sub)
        chat_id = await chat_of(hub, bob, alice)
        message_id = await post(hub, bob, chat_id, "read me soon")
        async with asyncio.timeout(20):
            while service.open_requests == 0:  # decided, and the first device's push is out
                await asyncio.sleep(0.02)
        read = await hub.http.post(f"/api/v1/chats/{chat_id}/read", json={"message_id": message_id},
                                   headers=alice.headers)
        assert read.status_code == 204, read.text
        await service.wait_accepted(3, timeout=30)
        await quiet(2.5)
    payloads = {sub.endpoint: [p.payload.get("close", p.payload.get("body")) for p in service.received
                               if p.endpoint == sub.endpoint] for sub in subs}
    close = f"chat-{chat_id}"
    assert sorted(payloads.values()) == [[close], ["read me soon", close]]


async def test_a_batch_of_sent_pushes_is_finished_in_one_statement(
        hub: RunningHub, service: PushService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushes sent together leave the outbox in one statement that also claims the next ones
    (bench: round trips per push), not a DELETE per push, and each subscription still gets its
    push once."""
    rounds: list[list[int]] = []
    deletes: list[str] = []
    fetch = asyncpg.Connection.fetch

    async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        if query == push_store._FINISH_AND_CLAIM:
            rounds.append(list(args[0]))
        return await fetch(self, query, *args, **kwargs)

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("DELETE FROM push_outbox WHERE push_outbox.id"):
            deletes.append(statement)

    alice, bob = await register(hub.http), await register(hub.http)
    subs = [service.subscribe() for _ in range(3)]
    for sub in subs:
        await subscribe(hub, alice, sub)
    chat_id = await chat_of(hub, bob, alice)
    monkeypatch.setattr(asyncpg.Connection, "fetch", spy)
    event.listen(Engine, "before_cursor_execute", count)
    try:
        await post(hub, bob, chat_id, "all three devices")
        for sub in subs:
            await service.wait_accepted(1, sub)
        await quiet(1.0)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert len(service.received) == 3
    finished = [ids for ids in rounds if ids]
    assert len(finished) == 1 and len(finished[0]) == 3, rounds  # one round finished all three
    assert deletes == []


async def test_requests_in_flight_are_bounded(push_settings: Settings, service: PushService) -> None:
    """With PUSH_MAX_IN_FLIGHT=2 and answers held back, 2 requests are open at once, never
    more, and as one finishes the next starts, until each of 7 devices has its push once."""
    service.hold = 0.5
    async with serve_hub(replace(push_settings, push_max_in_flight=2)) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        subs = [service.subscribe() for _ in range(7)]
        for sub in subs:
            await subscribe(hub, alice, sub)
        chat_id = await chat_of(hub, bob, alice)
        await post(hub, bob, chat_id, "seven devices")
        await service.wait_accepted(7, timeout=30)
        await quiet(1.0)
    assert service.most_open == 2
    assert sorted(p.endpoint for p in service.received) == sorted(s.endpoint for s in subs)


async def test_gone_subscription_is_deleted(hub: RunningHub, service: PushService) -> None:
    alice, bob = await register(hub.http), await register(hub.http)
    sub = service.subscribe()
    sub.statuses = [(410, {})]
    sub_id = await subscribe(hub, alice, sub)
    chat_id = await chat_of(hub, bob, alice)
    await post(hub, bob, chat_id, "anyone?")
    async with asyncio.timeout(20):
        while not service.received:
            await asyncio.sleep(0.05)
    await quiet(1.0)
    gone = await hub.http.delete(f"{SUBSCRIPTIONS}/{sub_id}", headers=alice.headers)
    assert gone.status_code == 404  # the hub deleted it
    await post(hub, bob, chat_id, "still?")
    await quiet(DELAY + 2)
    assert len(service.received) == 1


async def test_429_and_500_are_retried_then_sent_once(hub: RunningHub, service: PushService) -> None:
    alice, bob = await register(hub.http), await register(hub.http)
    sub = service.subscribe()
    sub.statuses = [(429, {"Retry-After": "1"}), (500, {})]
    await subscribe(hub, alice, sub)
    chat_id = await chat_of(hub, bob, alice)
    await post(hub, bob, chat_id, "eventually")
    [push] = await service.wait_accepted(1, sub, timeout=30)
    assert [p.status for p in service.received] == [429, 500, 201]
    assert {p.payload["event"]["id"] for p in service.received} == {push.payload["event"]["id"]}
    await quiet(2)
    assert len(service.received) == 3


async def test_restart_between_commit_and_send_pushes_once(push_settings: Settings,
                                                           service: PushService) -> None:
    settings = replace(push_settings, push_delay=2.0)
    port = free_port()
    async with serve_hub(settings, port) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        sub = service.subscribe()
        await subscribe(hub, alice, sub)
        chat_id = await chat_of(hub, bob, alice)
        await post(hub, bob, chat_id, "before the restart")
    assert service.received == []  # stopped before the delay was over
    async with serve_hub(settings, port) as hub:
        await service.wait_accepted(1, sub)
        await post(hub, bob, chat_id, "after the restart")
        await service.wait_accepted(2, sub)
    async with serve_hub(settings, port):
        await quiet(2.0 + 2)
    assert [p.payload["body"] for p in service.received] == ["before the restart", "after the restart"]


async def test_two_hubs_never_send_one_push_twice(push_settings: Settings, service: PushService) -> None:
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(serve_hub(push_settings))
        await stack.enter_async_context(serve_hub(push_settings))
        bob = await register(first.http)
        readers = [await register(first.http) for _ in range(5)]
        subs = [service.subscribe() for _ in readers]
        for reader, sub in zip(readers, subs, strict=True):
            await subscribe(first, reader, sub)
        answer = await first.http.post("/api/v1/chats", headers=bob.headers, json={
            "title": "All", "member_ids": [r.id for r in readers]})
        chat_id = answer.json()["id"]
        for n in range(10):
            await post(first, bob, chat_id, f"message {n}")
        await service.wait_accepted(50, timeout=40)
        await quiet(DELAY + 2)
    keys = [(p.endpoint, p.payload["event"]["id"]) for p in service.received]
    assert len(keys) == 50 and len(set(keys)) == 50


async def test_subscription_validation(hub: RunningHub, push_settings: Settings,
                                       service: PushService) -> None:
    alice, mallory = await register(hub.http), await register(hub.http)
    key = await hub.http.get("/api/v1/push/key")
    assert key.status_code == 200 and key.json() == {"public_key": PUBLIC_KEY}
    good = service.subscribe().json()

    async def attempt(body: object, account: Account = alice) -> tuple[int, dict[str, object]]:
        answer = await hub.http.post(SUBSCRIPTIONS, json=body, headers=account.headers)
        return answer.status_code, answer.json()

    for endpoint in ("http://localhost/push/x", "ftp://localhost/x", "https://user:pw@localhost/x",
                     "not a url", "https://" + "a" * 3000 + ".com/"):
        status, body = await attempt({**good, "endpoint": endpoint})
        assert status == 422 and body["error"] == "invalid", (endpoint, body)
    for keys in ({"p256dh": "AAAA", "auth": good["keys"]["auth"]},
                 {"p256dh": good["keys"]["p256dh"], "auth": "AAAA"}, {"p256dh": "x"}):
        status, body = await attempt({**good, "keys": keys})
        assert status == 422, (keys, body)
    assert (await hub.http.post(SUBSCRIPTIONS, json=good)).status_code == 401
    status, first = await attempt(good)
    assert status == 201
    status, again = await attempt(good)
    assert status == 200 and again == first
    for _ in range(9):
        assert (await attempt(service.subscribe().json()))[0] == 201
    status, body = await attempt(service.subscribe().json())
    assert status == 422 and "at most 10" in str(body["detail"])
    assert (await hub.http.delete(f"{SUBSCRIPTIONS}/{first['id']}",
                                  headers=mallory.headers)).status_code == 404
    assert (await hub.http.delete(f"{SUBSCRIPTIONS}/{first['id']}",
                                  headers=alice.headers)).status_code == 204
    assert (await hub.http.delete(f"{SUBSCRIPTIONS}/{first['id']}",
                                  headers=alice.headers)).status_code == 404
    # Loopback is refused unless PUSH_ALLOW_PRIVATE says otherwise.
    async with serve_hub(replace(push_settings, push_allow_private=False)) as strict:
        bob = await register(strict.http)
        answer = await strict.http.post(SUBSCRIPTIONS, json=service.subscribe().json(),
                                        headers=bob.headers)
        assert answer.status_code == 422 and "public address" in answer.json()["detail"]


async def test_push_is_off_without_a_vapid_key(push_settings: Settings) -> None:
    async with serve_hub(replace(push_settings, vapid_private_key=None)) as hub:
        alice = await register(hub.http)
        assert (await hub.http.get("/api/v1/push/key")).status_code == 404
        answer = await hub.http.post(SUBSCRIPTIONS, json={}, headers=alice.headers)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found"


async def test_service_worker_is_served_at_the_root(hub: RunningHub) -> None:
    answer = await hub.http.get("/sw.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert answer.headers["service-worker-allowed"] == "/"
    assert "showNotification" in answer.text and "notificationclick" in answer.text
