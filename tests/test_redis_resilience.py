"""Redis dies and comes back: nothing is lost.

Each test owns a private redis-server (no persistence) on a free port of 127.0.0.1, kills it
with SIGKILL mid-stream and restarts it on the same port. The shared Redis of the run is never
touched, so these tests cannot disturb anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection

from hub import broker_redis
from hub.broker import BrokerUnavailable
from hub.broker_redis import RedisBroker
from hub.settings import Settings
from tests.certs import self_signed
from tests.conftest import RUN_ID, TEST_AUTH_RATE_LIMIT, TEST_SECRET, free_port, register, serve_hub

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

WAIT = 10.0
API_KEY = "test-hub-api-key"
_ids = itertools.count(1)


class PrivateRedis:
    """A redis-server this test started and alone stops: `kill()` is SIGKILL, `start()` brings
    it back (empty) on the same port."""

    def __init__(self, directory: Path, password: str | None = None, tls: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self._password = password
        self._directory = directory
        self._tls: tuple[Path, Path] | None = None
        if tls:  # TLS only, for the name localhost; clients must trust `ca`
            self._tls = self_signed(directory)
            self.ca = self._tls[0]
            self.url = f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.ca}"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert self._process is None
        self._process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self._directory),
            *(("--requirepass", self._password) if self._password else ()),
            *(("--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self._tls[0]),
               "--tls-key-file", str(self._tls[1]), "--tls-auth-clients", "no") if self._tls else ()),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    if self._process.returncode is not None:
                        raise RuntimeError(f"redis-server on port {self.port} exited at start")
                    try:
                        await client.ping()
                        return
                    except (aioredis.ConnectionError, OSError):
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(WAIT):
            await process.wait()

    async def client_list(self) -> list[dict[str, Any]]:
        client = aioredis.from_url(self.url, decode_responses=True)
        try:
            async with asyncio.timeout(WAIT):
                return [dict(c) for c in await client.client_list()]
        finally:
            await client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


async def wait_until(condition: Any, what: str, timeout: float = WAIT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"not within {timeout}s: {what}")


# (a) the broker on its own -------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.resyncs = 0

    def deliver(self, channel: str, payload: bytes) -> None:
        self.messages[channel].append(payload)

    def on_resync(self) -> None:
        self.resyncs += 1


async def test_broker_resubscribes_every_channel_after_restarts(private_redis: PrivateRedis) -> None:
    client_name = f"hub-test-{RUN_ID}-resilience"
    broker = RedisBroker(private_redis.url, client_name=client_name)
    inbox = Inbox()
    channels = [f"test{RUN_ID}:resilience:{next(_ids)}" for _ in range(20)]
    late, dropped = f"test{RUN_ID}:late:{next(_ids)}", channels[0]
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync)
    try:
        async with asyncio.timeout(WAIT):
            for channel in channels:
                await broker.subscribe(channel)
        await publish_and_expect(broker, inbox, channels, b"before")

        for outage, (downtime, round_name) in enumerate(((0.2, b"after-1"), (3.0, b"after-2")), 1):
            await private_redis.kill()
            if outage == 1:
                async with asyncio.timeout(WAIT):  # while Redis is away
                    await broker.subscribe(late)
                    await broker.unsubscribe(dropped)
            await asyncio.sleep(downtime)
            await private_redis.start()
            await wait_until(lambda n=outage: inbox.resyncs >= n, f"on_resync after outage {outage}")
            assert broker.reconnects == outage
            live = [c for c in channels if c != dropped] + [late]
            await publish_and_expect(broker, inbox, live, round_name)
            assert round_name not in inbox.messages[dropped]
            named = [c for c in await private_redis.client_list() if c.get("name") == client_name]
            assert len(named) == 1, named  # still exactly one pub/sub connection
            assert int(named[0]["sub"]) == len(live)
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()
    for channel in channels[1:]:  # every message exactly once, in order
        assert inbox.messages[channel] == [b"before", b"after-1", b"after-2"]
    assert inbox.messages[late] == [b"after-1", b"after-2"]
    assert inbox.messages[dropped] == [b"before"]


async def round_trip(url: str, channel: str, payload: bytes) -> None:
    """A broker on `url` subscribes `channel`, publishes `payload` on it and receives it."""
    broker, inbox = RedisBroker(url), Inbox()
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync)
        try:
            await broker.subscribe(channel)
            await broker.publish([(channel, payload)])
            await wait_until(lambda: inbox.messages[channel] == [payload], "delivery")
        finally:
            await broker.close()


async def test_broker_authenticates_with_the_password_of_its_url(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    server = PrivateRedis(tmp_path, password="pub-sub-secret")
    await server.start()
    name = f"test{RUN_ID}:auth:{next(_ids)}"
    try:
        refused = RedisBroker(server.url.replace("pub-sub-secret", "not-the-password-42"))
        async with asyncio.timeout(WAIT):
            await refused.open(Inbox().deliver, lambda: None)  # keeps trying in the background
            await refused.close()
        assert "Redis is not reachable yet (AUTH: WRONGPASS" in caplog.text
        assert "not-the-password-42" not in caplog.text

        await round_trip(server.url, name, b"authenticated")
    finally:
        await server.kill()


async def test_broker_speaks_tls_to_a_rediss_url_and_checks_the_certificate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = PrivateRedis(tmp_path, tls=True)
    await server.start()
    name = f"test{RUN_ID}:tls:{next(_ids)}"
    try:
        untrusting = RedisBroker(server.url.split("?")[0])  # the system's CAs: not ours
        async with asyncio.timeout(WAIT):
            await untrusting.open(Inbox().deliver, lambda: None)
            with pytest.raises(BrokerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.publish([(name, b"refused")])
            await untrusting.close()
        assert "Redis is not reachable yet" in caplog.text

        await round_trip(server.url, name, b"over tls")
    finally:
        await server.kill()


class BlackholeProxy:
    """A TCP proxy in front of Redis that can turn its open connections into black holes: bytes
    stop flowing but nothing closes, like a NAT entry or a failed-over address dropped silently.
    Connections made after `blackhole()` are forwarded normally."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def blackhole(self) -> None:
        self._generation += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [writer, up_writer]
        generation = self._generation
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, generation))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    generation: int) -> None:
        while data := await source.read(65536):
            if generation == self._generation:  # a black-holed connection swallows everything
                sink.write(data)
                await sink.drain()


@contextlib.asynccontextmanager
async def broker_behind_proxy(private_redis: PrivateRedis, health_check_interval: float
                              ) -> AsyncIterator[tuple[BlackholeProxy, RedisBroker, Inbox, aioredis.Redis]]:
    """An open broker that reaches Redis through a `BlackholeProxy`, its inbox, and a direct
    client for publishing."""
    inbox = Inbox()
    direct = aioredis.from_url(private_redis.url)
    async with BlackholeProxy(private_redis.port) as proxy:
        broker = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0", health_check_interval=health_check_interval)
        try:
            async with asyncio.timeout(WAIT):
                await broker.open(inbox.deliver, inbox.on_resync)
            yield proxy, broker, inbox, direct
        finally:
            async with asyncio.timeout(WAIT):
                await broker.close()
                await direct.aclose()


async def test_broker_notices_a_silently_dead_connection(private_redis: PrivateRedis) -> None:
    name = f"test{RUN_ID}:blackhole:{next(_ids)}"
    async with broker_behind_proxy(private_redis, 0.5) as (proxy, broker, inbox, direct):
        async with asyncio.timeout(WAIT):
            await broker.subscribe(name)
            await direct.publish(name, b"before")
        await wait_until(lambda: inbox.messages[name] == [b"before"], "the first message")
        proxy.blackhole()
        await wait_until(lambda: inbox.resyncs == 1, "a reconnect after the silence")
        assert broker.reconnects == 1
        async with asyncio.timeout(WAIT):
            await direct.publish(name, b"after")
        await wait_until(lambda: inbox.messages[name] == [b"before", b"after"], "delivery again")


async def test_an_unconfirmed_subscribe_brings_a_reconnect_and_a_resync(
        private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Health pings far apart: only the missing SUBSCRIBE confirmation can reveal the dead link."""
    monkeypatch.setattr(broker_redis, "SUBSCRIBE_TIMEOUT", 1.0)  # 5 s in production
    first, second = (f"test{RUN_ID}:unconfirmed:{next(_ids)}" for _ in range(2))
    async with broker_behind_proxy(private_redis, 120) as (proxy, broker, inbox, direct):
        async with asyncio.timeout(WAIT):
            await broker.subscribe(first)
        proxy.blackhole()
        async with asyncio.timeout(broker_redis.SUBSCRIBE_TIMEOUT + WAIT):
            await broker.subscribe(second)  # gives up waiting after SUBSCRIBE_TIMEOUT
        assert f"no confirmation of SUBSCRIBE {second}" in caplog.text
        await wait_until(lambda: inbox.resyncs == 1, "a reconnect after the unconfirmed SUBSCRIBE")
        assert broker.reconnects == 1
        async with asyncio.timeout(WAIT):
            assert await direct.publish(second, b"after") == 1  # subscribed before the resync
        await wait_until(lambda: inbox.messages[second] == [b"after"], "delivery on the new channel")


async def test_a_silent_publishing_connection_is_dropped_and_the_next_publish_reconnects(
        private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_redis, "PUBLISH_TIMEOUT", 0.5)
    name = f"test{RUN_ID}:silent-publish:{next(_ids)}"
    async with broker_behind_proxy(private_redis, 120) as (proxy, broker, _inbox, direct):
        listener = direct.pubsub()
        async with asyncio.timeout(WAIT):
            await listener.subscribe(name)
            await broker.publish([(name, b"first")])  # opens the publishing connection
            proxy.blackhole()
            with pytest.raises(BrokerUnavailable):
                await broker.publish([(name, b"swallowed")])
            await broker.publish([(name, b"after")])  # a new connection, forwarded again
            heard = []
            while len(heard) < 2:
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    heard.append(message["data"])
            await listener.aclose()
        assert heard == [b"first", b"after"]


async def publish_and_expect(broker: RedisBroker, inbox: Inbox, channels: list[str],
                             payload: bytes) -> None:
    # the publishing pool may still hold a connection to the dead server: retry until it works
    async with asyncio.timeout(WAIT):
        while True:
            try:
                await broker.publish([(channel, payload) for channel in channels])
                break
            except BrokerUnavailable:
                await asyncio.sleep(0.05)
    await wait_until(lambda: all(payload in inbox.messages[c] for c in channels),
                     f"{payload!r} on {len(channels)} channels")


# (b) end to end: a hub, its WebSocket clients, and a Redis outage ----------------------------


async def open_socket(ws_url: str, token: str, last_event_id: int | None = None,
                      epoch: str | None = None) -> tuple[ClientConnection, dict[str, Any]]:
    auth: dict[str, Any] = {"type": "auth", "token": token}
    if last_event_id is not None:
        auth.update(last_event_id=last_event_id, epoch=epoch)
    async with asyncio.timeout(WAIT):
        socket = await websockets.connect(ws_url)
        await socket.send(orjson.dumps(auth).decode())
        welcome = orjson.loads(await socket.recv())
    assert welcome["type"] == "welcome", welcome
    return socket, welcome


async def read_events(socket: ClientConnection, count: int, timeout: float = 20.0) -> list[int]:
    ids: list[int] = []
    try:
        async with asyncio.timeout(timeout):
            while len(ids) < count:
                frame = orjson.loads(await socket.recv())
                assert frame["type"] == "event", frame
                ids.append(frame["id"])
    except TimeoutError:
        pytest.fail(f"{len(ids)} of {count} events within {timeout}s: {ids}")
    return ids


async def assert_silent(socket: ClientConnection, seconds: float) -> None:
    """Nothing more arrives (no duplicate from the relay, no stray frame) for `seconds`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            frame = await socket.recv()
            pytest.fail(f"unexpected frame: {frame!r}")


async def publish(http: httpx.AsyncClient, user_id: int, count: int, label: str,
                  pause: float = 0.0) -> list[int]:
    ids = []
    for index in range(count):
        await asyncio.sleep(pause)
        answer = await http.post("/api/v1/publish", headers={"Authorization": f"Bearer {API_KEY}"},
                                 json={"user_ids": [user_id], "name": "test.outage",
                                       "data": {"phase": label, "n": index}})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["events"][str(user_id)])
    return ids


async def test_hub_loses_nothing_across_a_redis_outage(private_redis: PrivateRedis,
                                                        postgres_url: str) -> None:
    settings = Settings(env="dev", jwt_secret=TEST_SECRET, hub_api_key=API_KEY,
                        database_url=postgres_url, redis_url=private_redis.url,
                        redis_channel_prefix=f"test{RUN_ID}:outage:", log_level="DEBUG",
                        auth_rate_limit=TEST_AUTH_RATE_LIMIT)
    async with serve_hub(settings) as hub:
        user = await register(hub.http)
        steady, _ = await open_socket(hub.ws_url, user.access_token)
        leaver, welcome = await open_socket(hub.ws_url, user.access_token)
        start, epoch = welcome["last_event_id"], welcome["epoch"]
        try:
            before = await publish(hub.http, user.id, 5, "before")
            assert before == list(range(start + 1, start + 6))
            assert await read_events(steady, 5) == before
            assert await read_events(leaver, 5) == before

            await private_redis.kill()
            await leaver.close()
            during = await publish(hub.http, user.id, 5, "during")  # committed, left to the relay
            assert during == list(range(start + 6, start + 11))
            # resuming while Redis is still down: replayed from the store
            leaver, welcome = await open_socket(hub.ws_url, user.access_token,
                                                last_event_id=before[-1], epoch=epoch)
            assert welcome["recovered"] is True
            assert welcome["epoch"] == epoch
            assert welcome["last_event_id"] == during[-1]
            assert await read_events(leaver, 5) == during

            await asyncio.sleep(0.5)
            await private_redis.start()
            # published at once, most likely before the hub's listener is back; with nothing
            # published after them, only the resync after the reconnect can bring them
            after = await publish(hub.http, user.id, 5, "after")
            assert after == list(range(start + 11, start + 16))
            assert await read_events(steady, 10) == during + after
            assert await read_events(leaver, 5) == after
            later = await publish(hub.http, user.id, 10, "later", pause=0.05)
            assert later == list(range(start + 16, start + 26))
            assert await read_events(steady, 10) == later
            assert await read_events(leaver, 10) == later
            # the relay may republish what was committed during the outage (about 2 s later):
            # connections drop what they already have, so nothing arrives twice
            await assert_silent(steady, 4.0)
            await assert_silent(leaver, 0.1)
            metrics = (await hub.http.get("/metrics")).text
            assert "hub_broker_reconnects_total 1.0" in metrics
        finally:
            await steady.close()
            await leaver.close()
