"""Several signal frames for one user in one broker message (hub/signals.py `send_many`): one
PUBLISH per recipient, one write per socket, still one WebSocket message or SSE event per frame,
in the order sent; a recipient held by this process alone is written to with no PUBLISH. On
the in-process broker and on real Redis, then end to end through a hub's /ws and event stream
on Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from hub.broker import Broker, user_channel
from hub.broker_memory import MemoryBroker
from hub.broker_redis import RedisBroker
from hub.connection import STREAM, Connection, SlowConsumer, text_frame
from hub.metrics import Metrics
from hub.registry import Registry
from hub.settings import Settings
from hub.signals import Signals, signal_frames
from hub.sse import SSE_EVENTS
from tests.conftest import serve_hub
from tests.in_memory import USER, Outlet, Store
from tests.sseutil import open_stream
from tests.test_connection import make
from tests.wsutil import connect, make_users

FRAMES = [{"type": "presence", "chat_id": 3, "user_id": 8, "online": True},
          {"type": "typing", "chat_id": 3, "user_id": 9},
          {"type": "presence", "chat_id": 4, "user_id": 8, "online": False}]


class Counted(Broker):
    """A broker that counts the messages handed to it."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.published: list[str] = []
        self.name = inner.name

    async def open(self, *args: Any, **kwargs: Any) -> None:
        await self.inner.open(*args, **kwargs)

    async def close(self) -> None:
        await self.inner.close()

    async def subscribe(self, channel: str) -> None:
        await self.inner.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.inner.unsubscribe(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.published += [channel for channel, _ in messages]
        await self.inner.publish(messages)

    async def ping(self) -> None:
        await self.inner.ping()


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Counted]:
    inner: Broker = MemoryBroker() if request.param == "memory" else RedisBroker(redis_url)
    yield Counted(inner)
    await inner.close()


def test_a_signal_payload_splits_into_its_frames_in_order() -> None:
    payloads = [orjson.dumps(frame) for frame in FRAMES]
    assert signal_frames(b"\n".join(payloads)) == payloads
    assert signal_frames(payloads[0]) == payloads[:1]


async def _three_sockets(broker: Counted, metrics: Metrics, prefix: str
                         ) -> tuple[Registry, list[Connection], list[Outlet]]:
    """A registry on the broker with USER on /ws and the stream, and USER + 1 on /ws."""
    registry = Registry(broker, metrics, prefix, max_per_user=5)
    await broker.open(registry.dispatch, registry.resync)
    ws, ws_out, _ = make()
    stream_out = Outlet()
    stream = Connection(USER, 2**40, stream_out, Store().read, metrics, 100, 1 << 20,
                        encoding=SSE_EVENTS, transport=STREAM)
    other_out = Outlet()
    other = Connection(USER + 1, 2**40, other_out, Store().read, metrics, 100, 1 << 20)
    for conn in (ws, stream, other):
        assert await registry.register(conn)
        conn.start_at(0)
    return registry, [ws, stream, other], [ws_out, stream_out, other_out]


async def test_frames_for_one_user_go_in_one_message_and_one_write_per_socket(
        broker: Counted) -> None:
    metrics, prefix = Metrics(), f"test-bundle-{uuid.uuid4().hex}:"
    registry, (ws, stream, other), (ws_out, stream_out, other_out) = await _three_sockets(
        broker, metrics, prefix)
    signals = Signals(broker, metrics, prefix)
    await signals.send_many([([USER, USER + 1], FRAMES[0]), ([USER], FRAMES[1]),
                             ([USER, USER], FRAMES[2])])
    assert sorted(broker.published) == [user_channel(prefix, USER), user_channel(prefix, USER + 1)]
    async with asyncio.timeout(5):
        while not (ws_out.frames and stream_out.frames and other_out.frames):
            await asyncio.sleep(0.01)
    payloads = [orjson.dumps(frame) for frame in FRAMES]
    assert ws_out.frames == [b"".join(text_frame(p) for p in payloads)]  # one write: 3 messages
    assert stream_out.frames == [b"".join(b"event: %s\ndata: %s\n\n" % (p[9:p.index(b'"', 9)], p)
                                          for p in payloads)]  # 3 SSE events, no id line
    assert other_out.frames == [text_frame(payloads[0])]
    assert ws.delivered == stream.delivered == 0
    assert metrics.signals_sent._value.get() == 4  # frames per recipient, not messages
    for conn in (ws, stream, other):
        registry.unregister(conn)


async def test_recipients_held_here_are_written_to_without_the_broker(broker: Counted) -> None:
    metrics, prefix = Metrics(), f"test-bundle-{uuid.uuid4().hex}:"
    registry, (ws, stream, other), (ws_out, stream_out, other_out) = await _three_sockets(
        broker, metrics, prefix)
    signals = Signals(broker, metrics, prefix, registry.signal_many)
    # USER (two connections here) and USER + 5 (none here: gone meanwhile) are held here alone
    await signals.send_many([([USER, USER + 1, USER + 5], FRAMES[0]), ([USER], FRAMES[1])],
                            here={USER, USER + 5})
    payloads = [orjson.dumps(frame) for frame in FRAMES[:2]]
    assert ws_out.frames == [b"".join(text_frame(p) for p in payloads)]  # before any broker hop
    assert stream_out.frames == [b"".join(b"event: %s\ndata: %s\n\n" % (p[9:p.index(b'"', 9)], p)
                                          for p in payloads)]
    assert broker.published == [user_channel(prefix, USER + 1)]  # only the one not held here
    async with asyncio.timeout(5):
        while not other_out.frames:
            await asyncio.sleep(0.01)
    assert other_out.frames == [text_frame(payloads[0])]
    assert metrics.signals_sent._value.get() == 4  # as published ones: per recipient, connected or not
    for conn in (ws, stream, other):
        registry.unregister(conn)


async def test_each_frame_of_a_bundle_counts_against_the_unsent_bound() -> None:
    conn, outlet, _ = make(max_messages=5)
    conn.start_at(0)
    outlet.backlog = 10  # the peer reads nothing
    frame = text_frame(orjson.dumps(FRAMES[1]))
    conn.signal(frame * 5, 5)
    assert not outlet.reasons
    conn.signal(frame)
    assert outlet.reasons and isinstance(outlet.reasons[0], SlowConsumer)


@pytest.fixture
def backend() -> str:
    return "postgres"


async def test_a_bundle_reaches_ws_and_the_stream_as_separate_frames_in_order(
        settings: Settings) -> None:
    (user, token), = await make_users(settings, 1)
    async with serve_hub(settings) as hub:
        sock = await connect(hub.ws_url, token)
        async with open_stream(hub.http, token) as stream:
            publisher = RedisBroker(settings.redis_url)
            await publisher.open(lambda _channel, _payload: None, lambda: None)
            try:
                await Signals(publisher, Metrics(), settings.redis_channel_prefix).send_many(
                    [([user], frame) for frame in FRAMES])
            finally:
                await publisher.close()
            assert [await sock.next() for _ in FRAMES] == FRAMES
            got = [await stream.next() for _ in FRAMES]
            assert [(m.event, m.data, m.id) for m in got] == [
                (frame["type"], frame, None) for frame in FRAMES]
        await sock.silent(0.3)
        await sock.close()
