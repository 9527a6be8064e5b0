"""The Python client (`hub.client`) and `hub listen` against a real hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from hub.client import Event, HubClient, HubClosed, Reset, api_url_of
from hub.client_tokens import PasswordLogin
from hub.db import Database
from hub.events import Event as NewEvent
from hub.events import EventBus
from hub.settings import Settings
from hub.streams import StoredEvent
from tests.conftest import RunningHub, free_port, register, serve_hub

WAIT = 10.0
API_KEY = "test-hub-api-key"


async def publish(http: httpx.AsyncClient, user_id: int, label: str) -> int:
    answer = await http.post("/api/v1/publish", headers={"Authorization": f"Bearer {API_KEY}"},
                             json={"user_ids": [user_id], "name": "test.client", "data": {"label": label}})
    assert answer.status_code == 202, answer.text
    return int(answer.json()["events"][str(user_id)])


class Consumer:
    """Runs `client.events()` in a task and queues what it yields."""

    def __init__(self, client: HubClient) -> None:
        self.client = client
        self.items: asyncio.Queue[Event | Reset] = asyncio.Queue()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async with contextlib.aclosing(self.client.events()) as items:
            async for item in items:
                await self.items.put(item)

    async def next(self, timeout: float = WAIT) -> Event | Reset:
        try:
            async with asyncio.timeout(timeout):
                return await self.items.get()
        except TimeoutError:
            if self.task.done():
                self.task.result()  # show why the client stopped
            raise

    async def events(self, count: int) -> list[Event]:
        found = []
        for _ in range(count):
            item = await self.next()
            assert isinstance(item, Event), item
            found.append(item)
        return found

    async def assert_quiet(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                item = await self.items.get()
                pytest.fail(f"unexpected item: {item!r}")

    async def stop(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.client.close()
            await asyncio.gather(self.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def consuming(client: HubClient) -> AsyncIterator[Consumer]:
    consumer = Consumer(client)
    try:
        yield consumer
    finally:
        await consumer.stop()


def fast_client(hub: RunningHub, tokens: str | PasswordLogin, last_event_id: int | None = None,
                epoch: str | None = None, transport: str = "ws") -> HubClient:
    """A client that retries quickly (tests restart hubs within a second or two)."""
    return HubClient(hub.ws_url, tokens, last_event_id=last_event_id, epoch=epoch,
                     backoff_base=0.05, backoff_cap=0.5, transport=transport)


async def test_client_receives_events_in_order(hub: RunningHub) -> None:
    user = await register(hub.http)
    async with consuming(fast_client(hub, user.access_token)) as consumer:
        first = await consumer.next()
        assert isinstance(first, Reset)
        assert first.resume_refused is False  # no position was given: the moment to load state
        ids = [await publish(hub.http, user.id, f"e{n}") for n in range(5)]
        events = await consumer.events(5)
        assert [e.id for e in events] == ids == list(range(first.last_event_id + 1, first.last_event_id + 6))
        assert [e.data for e in events] == [{"label": f"e{n}"} for n in range(5)]
        assert {e.name for e in events} == {"test.client"}
        assert consumer.client.last_event_id == ids[-1]
        assert consumer.client.epoch == first.epoch
    assert consumer.task.done()
    assert consumer.task.exception() is None  # close() ends events() normally


async def test_client_reconnects_after_a_hub_restart(settings: Settings) -> None:
    port = free_port()
    async with serve_hub(settings, port=port) as first_hub:
        user = await register(first_hub.http)
        login = PasswordLogin(first_hub.base_url, user.username, user.password)  # its own httpx
        client = fast_client(first_hub, login)
        consumer = Consumer(client)
        try:
            reset = await consumer.next()
            assert isinstance(reset, Reset)
            before = [await publish(first_hub.http, user.id, "before") for _ in range(3)]
            assert [e.id for e in await consumer.events(3)] == before
        except BaseException:
            await consumer.stop()
            await login.aclose()
            raise
    try:
        # no hub at all now: the client keeps trying; events are written straight to the store
        written = await write_events(settings, user.id, 3)
        assert written == [before[-1] + 1, before[-1] + 2, before[-1] + 3]
        await asyncio.sleep(0.5)
        async with serve_hub(settings, port=port) as second_hub:
            after = [await publish(second_hub.http, user.id, "after") for _ in range(3)]
            events = await consumer.events(6)
            assert [e.id for e in events] == written + after  # resumed: no Reset, no gap, no repeat
            assert [e.data["label"] for e in events] == ["down"] * 3 + ["after"] * 3
            await consumer.assert_quiet(1.0)
            assert client.connects == 2
            assert client.last_event_id == after[-1]
    finally:
        await consumer.stop()
        await login.aclose()


async def write_events(settings: Settings, user_id: int, count: int) -> list[int]:
    """Commit events while no hub runs (the public write API, with nobody to publish to)."""
    db = Database(settings.database_url)
    db.open()
    written: list[StoredEvent] = []

    async def nobody_listens(events: object) -> None:
        return None

    try:
        for _ in range(count):
            async with EventBus(db, nobody_listens).transaction() as tx:
                event = NewEvent.published("test.client", b'{"label":"down"}')
                written += await tx.emit([user_id], event)
    finally:
        await db.close()
    return [e.id for e in written]


async def test_client_resumes_from_a_given_position_or_reports_a_reset(hub: RunningHub) -> None:
    user = await register(hub.http)
    ids = [await publish(hub.http, user.id, f"old{n}") for n in range(4)]
    history = (await hub.http.get("/api/v1/events", headers=user.headers)).json()
    async with consuming(fast_client(hub, user.access_token, last_event_id=ids[1],
                                     epoch=history["epoch"])) as consumer:
        assert [e.id for e in await consumer.events(2)] == ids[2:]  # replayed, no Reset first
    async with consuming(fast_client(hub, user.access_token, last_event_id=ids[1],
                                     epoch="not-the-epoch")) as consumer:
        reset = await consumer.next()
        assert reset == Reset(history["epoch"], ids[-1], resume_refused=True)
        new = await publish(hub.http, user.id, "new")
        assert [e.id for e in await consumer.events(1)] == [new]


async def drain(client: HubClient) -> None:
    """Iterate until the client stops (a terminal close raises HubClosed)."""
    async with asyncio.timeout(WAIT):
        async for _ in client.events():
            pass


async def test_an_invalid_token_is_terminal(hub: RunningHub) -> None:
    client = fast_client(hub, "not-a-token")
    with pytest.raises(HubClosed) as closed:
        await drain(client)
    assert closed.value.code == 4001


@pytest.mark.parametrize(("code", "terminal"), [
    (1002, True), (1007, True), (1009, True), (4003, True), (4500, True),
    (1011, False), (4009, False), (4010, False), (4400, False),
])
async def test_the_client_follows_the_close_code_enumeration(code: int, terminal: bool) -> None:
    """A server that opens like the hub (auth, welcome) and then closes with `code`: the client
    stops (HubClosed) on a terminal code (`hub.close_codes.action_for`, unknown codes by range)
    and reconnects on any other. 1002 and 1007 used to be retried forever."""
    connects = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connects
        connects += 1
        await ws.recv()
        await ws.send(orjson.dumps({"type": "welcome", "user_id": 1, "epoch": "e",
                                    "last_event_id": 0, "recovered": False}).decode())
        await ws.close(code, "closed by the test")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = HubClient(f"ws://127.0.0.1:{port}/ws", "token", backoff_base=0.01, backoff_cap=0.05)
        if terminal:
            with pytest.raises(HubClosed) as closed:
                await drain(client)
            assert (closed.value.code, connects) == (code, 1)
        else:
            async with consuming(client) as consumer:
                for _ in range(3):
                    assert isinstance(await consumer.next(), Reset)
            assert connects >= 3


async def test_a_wrong_url_is_terminal(hub: RunningHub) -> None:
    client = HubClient(hub.base_url.replace("http://", "ws://") + "/not-ws", "token")
    with pytest.raises(HubClosed) as closed:
        await drain(client)
    assert closed.value.code in (403, 404)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_client_refreshes_its_token_before_expiry(settings: Settings) -> None:
    async with serve_hub(replace(settings, access_token_ttl=3)) as hub:
        user = await register(hub.http)
        tokens = PasswordLogin(hub.base_url, user.username, user.password, http=hub.http)
        async with consuming(fast_client(hub, tokens)) as consumer:
            assert isinstance(await consumer.next(), Reset)
            await asyncio.sleep(4.5)  # past the first token's expiry: refresh frames kept it open
            event_id = await publish(hub.http, user.id, "late")
            assert [e.id for e in await consumer.events(1)] == [event_id]
            assert consumer.client.connects == 1


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_an_expired_static_token_is_terminal(settings: Settings) -> None:
    async with serve_hub(replace(settings, access_token_ttl=2)) as hub:
        user = await register(hub.http)
        client = fast_client(hub, user.access_token)
        with pytest.raises(HubClosed) as closed:
            await drain(client)
        assert closed.value.code == 4001


def test_api_url_of() -> None:
    assert api_url_of("ws://127.0.0.1:8000/ws") == "http://127.0.0.1:8000"
    assert api_url_of("wss://hub.example/prefix/ws") == "https://hub.example/prefix"


async def test_hub_listen_prints_live_events_as_json_lines(hub: RunningHub) -> None:
    user = await register(hub.http)
    env = {**os.environ, "HUB_PASSWORD": user.password}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "listen", "--url", hub.ws_url, "--username", user.username,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        assert process.stderr is not None
        assert process.stdout is not None
        async with asyncio.timeout(WAIT):
            note = await process.stderr.readline()  # the first welcome: stream position
        assert b"live" in note, note
        event_id = await publish(hub.http, user.id, "printed")
        async with asyncio.timeout(WAIT):
            line = await process.stdout.readline()
        printed = orjson.loads(line)
        assert printed["id"] == event_id
        assert printed["name"] == "test.client"
        assert printed["data"] == {"label": "printed"}
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_slow_reader_is_cut_off_and_resumes_without_loss(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_queue_max_messages=5)) as hub:
        user = await register(hub.http)
        client = fast_client(hub, user.access_token)
        async with contextlib.aclosing(client.events()) as items:
            async with asyncio.timeout(WAIT):
                assert isinstance(await anext(items), Reset)
            # nobody reads now: the socket's buffers fill, the hub's queue overflows (4009)
            padding = "x" * 32_000
            ids = []
            async with asyncio.timeout(60):
                for _ in range(200):
                    answer = await hub.http.post(
                        "/api/v1/publish", headers={"Authorization": f"Bearer {API_KEY}"},
                        json={"user_ids": [user.id], "name": "test.bulk", "data": {"p": padding}})
                    assert answer.status_code == 202, answer.text
                    ids.append(answer.json()["events"][str(user.id)])
            received: list[int] = []
            async with asyncio.timeout(30):
                while len(received) < len(ids):
                    item = await anext(items)
                    assert isinstance(item, Event), item  # resumed in full: no Reset
                    received.append(item.id)
            assert received == ids
            assert client.connects >= 2
        metrics = (await hub.http.get("/metrics")).text
        assert 'hub_slow_consumer_disconnects_total{transport="ws"} 1.0' in metrics


async def test_over_the_event_stream_the_client_gets_resumes_and_resets_the_same(hub: RunningHub) -> None:
    user = await register(hub.http)
    async with consuming(fast_client(hub, user.access_token, transport="stream")) as consumer:
        first = await consumer.next()
        assert first == Reset(first.epoch, 0, resume_refused=False)  # type: ignore[union-attr]
        ids = [await publish(hub.http, user.id, f"e{n}") for n in range(5)]
        events = await consumer.events(5)
        assert [e.id for e in events] == ids
        assert [e.data for e in events] == [{"label": f"e{n}"} for n in range(5)]
    epoch = consumer.client.epoch
    more = [await publish(hub.http, user.id, f"m{n}") for n in range(3)]
    async with consuming(fast_client(hub, user.access_token, last_event_id=ids[-1], epoch=epoch,
                                     transport="stream")) as consumer:
        assert [e.id for e in await consumer.events(3)] == more  # replayed, no Reset first
    async with consuming(fast_client(hub, user.access_token, last_event_id=1, epoch="other",
                                     transport="stream")) as consumer:
        assert await consumer.next() == Reset(epoch or "", more[-1], resume_refused=True)


async def test_over_the_event_stream_a_bad_token_is_terminal(hub: RunningHub) -> None:
    with pytest.raises(HubClosed) as closed:
        await drain(fast_client(hub, "not-a-token", transport="stream"))
    assert closed.value.code == 4001


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_over_the_event_stream_the_client_refreshes_at_expiry_and_survives_a_restart(
        settings: Settings) -> None:
    port = free_port()
    tight = replace(settings, access_token_ttl=3)
    async with serve_hub(tight, port=port) as first_hub:
        user = await register(first_hub.http)
        login = PasswordLogin(first_hub.base_url, user.username, user.password)
        consumer = Consumer(fast_client(first_hub, login, transport="stream"))
        try:
            assert isinstance(await consumer.next(), Reset)
            await asyncio.sleep(4.5)  # token_expired ended the first stream: refreshed, resumed
            late = await publish(first_hub.http, user.id, "late")
            assert [e.id for e in await consumer.events(1)] == [late]
            assert consumer.client.connects == 2
        except BaseException:
            await consumer.stop()
            await login.aclose()
            raise
    try:  # server_restarting ended the stream: it resumes on the next hub, losing nothing
        written = await write_events(settings, user.id, 2)
        async with serve_hub(tight, port=port) as second_hub:
            after = await publish(second_hub.http, user.id, "after")
            assert [e.id for e in await consumer.events(3)] == [*written, after]
            await consumer.assert_quiet(0.5)
    finally:
        await consumer.stop()
        await login.aclose()


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        HubClient("ws://127.0.0.1:1/ws", "token", transport="sse")
