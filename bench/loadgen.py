"""The load generator: WebSocket clients (picows) that check every delivery, and a raw RESP
publisher that injects events into Redis at a fixed rate (`bench.cluster_target` has the one for a
Redis Cluster).

Every event the bench injects carries `{"u": user, "s": seq, "t": send time}`: a client counts
an event as delivered only when it is for its own user (else misrouted) and carries the next
sequence number of that user (a smaller one is a duplicate or out of order; a larger one means
events were skipped). Events written through the hub's publish API are recorded as (id, call)
pairs and checked against the API's answers afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

HUB, PLAIN, SOCKETIO = "hub", "plain", "socketio"
T = TypeVar("T")


@dataclass
class Counters:
    """What the clients saw in one measurement window."""

    delivered: int = 0
    skipped: int = 0
    late_or_duplicate: int = 0
    misrouted: int = 0
    signals: int = 0  # live-only frames (presence, typing): not events, not checked
    latencies: list[float] = field(default_factory=list)
    last_receive: float = 0.0

    def reset(self) -> None:
        self.delivered = self.skipped = self.late_or_duplicate = self.misrouted = self.signals = 0
        self.latencies = []
        self.last_receive = 0.0


class Client(WSListener):
    """One connection of one user; `dialect` is the server's framing (hub, plain, socketio)."""

    def __init__(self, fleet: Fleet, user_id: int, token: str, resume: tuple[int, str] | None) -> None:
        self.fleet = fleet
        self.user_id = user_id
        self.token = token
        self.resume = resume
        self.transport: WSTransport | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.welcome.add_done_callback(_retrieve)  # a client given up on is no error to report
        self.close_code: int | None = None
        self.disconnected = asyncio.Event()
        self.next_seq = 1  # next injected event this client expects
        self.sent_seq = 0  # last injected event published to this client's user
        self.base_id = 0  # the hub's stream id before the first injected event
        self.last_id = 0  # newest stream id seen (hub)
        self.epoch = ""
        self.recorded: list[tuple[int, int, float]] | None = None  # (id, call, receive time)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.fleet.dialect != SOCKETIO:
            frame: dict[str, Any] = {"type": "auth", "token": self.token}
            if self.resume is not None:
                frame["last_event_id"], frame["epoch"] = self.resume
            transport.send(WSMsgType.TEXT, orjson.dumps(frame))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code().value)
            transport.disconnect()
            return
        if kind != WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if self.fleet.dialect == SOCKETIO:
            inner = self._socketio(transport, payload)
            if inner is None:
                return
            payload = inner
        elif not self.welcome.done():
            message = orjson.loads(payload)
            if message.get("type") == "welcome":
                self.epoch = message.get("epoch", "")
                self.last_id = self.base_id = int(message.get("last_event_id", 0))
                if self.resume is not None and message.get("recovered"):
                    self.last_id = self.base_id = self.resume[0]  # the replay follows
                self.welcome.set_result(message)
            return
        elif payload[:9] == b'{"type":"' and payload[9:15] != b'event"':
            self.fleet.counters.signals += 1
            return
        self.fleet.on_event(self, orjson.loads(payload))

    def _socketio(self, transport: WSTransport, payload: bytes) -> bytes | None:
        if payload.startswith(b"42"):
            # 42["bench",{event}]
            return payload[payload.index(b",", 2) + 1:-1]
        if payload == b"2":
            transport.send(WSMsgType.TEXT, b"3")
        elif payload.startswith(b"0{"):
            transport.send(WSMsgType.TEXT, b"40" + orjson.dumps({"token": self.token}))
        elif payload.startswith(b"40") and not self.welcome.done():
            self.welcome.set_result({"type": "welcome", "user_id": self.user_id})
        elif payload.startswith(b"44") and not self.welcome.done():
            self.welcome.set_exception(RuntimeError(f"socket.io refused: {payload[:200]!r}"))
        return None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected.set()
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before welcome ({self.close_code})"))
        self.fleet.on_closed(self)

    def close(self) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            self.transport.send_close()
            self.transport.disconnect()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Fleet:
    """All clients against one server (or several processes of one: `url` a list of them, each
    user's connection on `urls[user_id % len(urls)]`), and the checks of what they receive."""

    def __init__(self, url: str | Sequence[str], dialect: str, tokens: Callable[[int], str]) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self.dialect = dialect
        self.tokens = tokens
        self.clients: dict[int, Client] = {}  # one connection per user
        self.counters = Counters()
        self.unexpected_closes: list[tuple[int, int | None]] = []
        self.recording = False
        self.on_other: Callable[[Client, dict[str, Any]], None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # --- connections -------------------------------------------------------------------

    async def connect(self, user_ids: Sequence[int], in_flight: int = 200,
                      resume: dict[int, tuple[int, str]] | None = None,
                      limit: float = 60.0) -> tuple[float, int]:
        """Open one authenticated connection per user; returns (seconds, failures)."""
        gate = asyncio.Semaphore(in_flight)
        failures = 0

        async def one(user_id: int) -> None:
            nonlocal failures
            async with gate:
                client = Client(self, user_id, self.tokens(user_id),
                                resume.get(user_id) if resume else None)
                try:
                    async with asyncio.timeout(limit):
                        await ws_connect(lambda: client, self.urls[user_id % len(self.urls)],
                                         websocket_handshake_timeout=limit,
                                         max_frame_size=1 << 20)
                        await client.welcome
                except asyncio.CancelledError:
                    client.close()
                    raise
                except Exception:
                    failures += 1
                    client.close()
                    return
                self.clients[user_id] = client

        started = time.perf_counter()
        await asyncio.gather(*(one(u) for u in user_ids))
        return time.perf_counter() - started, failures

    async def disconnect(self, user_ids: Sequence[int] | None = None, limit: float = 30.0) -> None:
        chosen = list(self.clients) if user_ids is None else list(user_ids)
        clients = [self.clients.pop(u) for u in chosen if u in self.clients]
        for client in clients:
            client.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                for client in clients:
                    await client.disconnected.wait()

    def on_closed(self, client: Client) -> None:
        if self.clients.get(client.user_id) is client:
            self.unexpected_closes.append((client.user_id, client.close_code))
            del self.clients[client.user_id]

    # --- deliveries --------------------------------------------------------------------

    def on_event(self, client: Client, event: dict[str, Any]) -> None:
        now = time.time()
        counters = self.counters
        counters.last_receive = now
        data = event.get("data") or {}
        if self.dialect == HUB:
            event_id = event.get("id", 0)
            if event_id <= client.last_id:
                counters.late_or_duplicate += 1
                return
            if event_id != client.last_id + 1:
                counters.skipped += event_id - client.last_id - 1
            client.last_id = event_id
        if self.recording and "k" in data:
            if client.recorded is None:
                client.recorded = []
            client.recorded.append((event.get("id", 0), data["k"], now))
            counters.delivered += 1
            counters.latencies.append(now - data["t"])
            self._wake(counters.delivered)
            return
        if "u" not in data and self.on_other is not None:
            self.on_other(client, event)
            return
        if data.get("u") != client.user_id:
            counters.misrouted += 1
            return
        seq = data.get("s", 0)
        if seq < client.next_seq:
            counters.late_or_duplicate += 1
            return
        if seq > client.next_seq:
            counters.skipped += seq - client.next_seq
        client.next_seq = seq + 1
        counters.delivered += 1
        counters.latencies.append(now - data["t"])
        self._wake(counters.delivered)

    def _wake(self, delivered: int) -> None:
        if self._waiters and delivered >= self._waiters[0][0]:
            keep = []
            for target, future in self._waiters:
                if delivered >= target:
                    if not future.done():
                        future.set_result(None)
                else:
                    keep.append((target, future))
            self._waiters = keep

    async def wait_delivered(self, target: int, limit: float) -> bool:
        """Wait until `target` events were delivered in this window (False on time-out)."""
        if self.counters.delivered >= target:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self._waiters.sort(key=lambda pair: pair[0])
        try:
            async with asyncio.timeout(limit):
                await future
            return True
        except TimeoutError:
            return False


class Publisher(Protocol):
    """What the scenarios inject events with."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None: ...

    async def flushed(self, limit: float = 30.0) -> None: ...


class RespPublisher:
    """PUBLISH (or `command`, e.g. SPUBLISH) over one raw Redis connection, pipelined; the load
    generator's own cost stays small (no client library), so the servers are what is measured."""

    def __init__(self, host: str, port: int, command: bytes = b"PUBLISH") -> None:
        self._host, self._port = host, port
        self._head = b"*3\r\n$%d\r\n%s\r\n" % (len(command), command)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.sent = 0
        self.replies = 0
        self.no_subscriber = 0
        self.refused = 0  # error replies (a MOVED would mean a channel sent to the wrong master)
        self._idle = asyncio.Event()

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        tail = b""
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                return
            chunk = tail + chunk
            cut = chunk.rfind(b"\r\n") + 2
            whole, tail = chunk[:cut], chunk[cut:]
            self.replies += whole.count(b"\r\n")
            self.no_subscriber += whole.count(b":0\r\n")
            self.refused += (b"\n" + whole).count(b"\n-")
            if self.replies >= self.sent:
                self._idle.set()

    def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        assert self._writer is not None
        head = self._head
        parts = []
        for channel, payload in messages:
            parts.append(head + b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(channel), channel, len(payload), payload))
        self._writer.write(b"".join(parts))
        self.sent += len(messages)
        self._idle.clear()

    async def flushed(self, limit: float = 30.0) -> None:
        """Wait until Redis answered every PUBLISH sent so far."""
        async with asyncio.timeout(limit):
            while self.replies < self.sent:
                self._idle.clear()
                await self._idle.wait()


def rfc3339_now() -> bytes:
    now = time.time()
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
    return whole + b".%03dZ" % (int(now * 1000) % 1000)


class Injector:
    """Turns (client, time) into the channel and payload each server expects: the hub's and the
    plain peers' `notifications:{user}` with the event JSON, or socket.io's emit message."""

    def __init__(self, dialect: str, prefix: bytes = b"") -> None:
        self.dialect = dialect
        self.prefix = prefix  # the hub's REDIS_CHANNEL_PREFIX

    def message(self, client: Client, stamp: float, created: bytes) -> tuple[bytes, bytes]:
        client.sent_seq += 1
        seq = client.sent_seq
        event = b'{"id":%d,"name":"bench","data":{"u":%d,"s":%d,"t":%.6f},"created_at":"%s"}' % (
            client.base_id + seq, client.user_id, seq, stamp, created)
        if self.dialect == SOCKETIO:
            return b"socketio", (
                b'{"method":"emit","event":"bench","data":[%s],"binary":false,"namespace":"/",'
                b'"room":"user:%d","skip_sid":null,"callback":null,"host_id":"bench"}'
                % (event, client.user_id))
        return b"%snotifications:%d" % (self.prefix, client.user_id), event


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def pick(rng: random.Random, population: Sequence[T], count: int) -> list[T]:
    return [population[rng.randrange(len(population))] for _ in range(count)]
