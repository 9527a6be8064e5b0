"""Signals beside the event stream (hub/signals.py, `Connection.signal`, `Registry.dispatch`) and
presence stores (hub/presence.py in memory, hub/presence_redis.py on a real Redis). Pure logic
on in-memory stand-ins, except the Redis store."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Sequence
from types import SimpleNamespace

import orjson
import pytest

from hub.broker_memory import MemoryBroker
from hub.connection import STREAM, Connection, SlowConsumer, event_frame, text_frame
from hub.metrics import Metrics
from hub.presence import MemoryPresence, Presence
from hub.presence_redis import RedisPresence
from hub.registry import Registry
from hub.signals import Signals, is_signal, signal_payload
from hub.sse import SSE_EVENTS, end_message, ending
from hub.stream_outlet import StreamOutlet
from hub.stream_socket import StreamSocket
from hub.ws_keepalive import KeepaliveWheel
from tests.in_memory import USER, Outlet, Store, payload
from tests.test_connection import make, offer, settled

TYPING = {"type": "typing", "chat_id": 3, "user_id": 8}


def test_a_signal_payload_starts_with_its_type_and_is_told_from_an_event_by_one_byte() -> None:
    signal = signal_payload({"chat_id": 3, "user_id": 8, "type": "typing"})
    assert signal.startswith(b'{"type":"typing",')
    assert is_signal(signal) and not is_signal(payload(1))
    with pytest.raises(ValueError, match="a signal frame needs"):
        signal_payload({"type": "event", "id": 1})
    with pytest.raises(ValueError, match="a signal frame needs"):
        signal_payload({"chat_id": 3})


async def test_signals_are_written_outside_the_numbering_and_only_once_started() -> None:
    conn, outlet, _ = make()
    frame = text_frame(signal_payload(TYPING))
    conn.signal(frame)  # before the welcome: dropped
    conn.start_at(0)
    offer(conn, 1)
    conn.signal(frame)
    offer(conn, 2)
    assert outlet.frames == [event_frame(payload(1)), frame, event_frame(payload(2))]
    assert conn.delivered == 2
    conn.stop()
    conn.signal(frame)  # after the end: dropped
    assert len(outlet.frames) == 3


async def test_a_signal_during_a_gap_fill_neither_waits_nor_disturbs_the_order() -> None:
    store = Store([1, 2, 3])
    store.gate.clear()
    conn, outlet, _ = make(store)
    conn.start_at(0)
    offer(conn, 3)  # 1 and 2 are read from the store first
    await asyncio.sleep(0)
    frame = text_frame(signal_payload(TYPING))
    conn.signal(frame)
    assert outlet.frames == [frame]  # at once, not behind the fill
    store.gate.set()
    await settled(conn)
    assert outlet.frames[1:] == [event_frame(payload(i)) for i in (1, 2, 3)]
    assert conn.delivered == 3


async def test_unread_signals_make_a_slow_consumer_like_unread_events() -> None:
    conn, outlet, _ = make(max_messages=5)
    conn.start_at(0)
    outlet.backlog = 10  # the peer reads nothing
    frame = text_frame(signal_payload(TYPING))
    for _ in range(6):
        conn.signal(frame)
    assert outlet.reasons and isinstance(outlet.reasons[0], SlowConsumer)


async def test_dispatch_hands_a_signal_to_every_connection_of_the_user_without_an_id() -> None:
    broker = MemoryBroker()
    metrics = Metrics()
    registry = Registry(broker, metrics, "", max_per_user=5)
    await broker.open(registry.dispatch, registry.resync)
    first, first_out, _ = make()
    second, second_out, _ = make()
    stream_out = Outlet()
    stream = Connection(USER, 2**40, stream_out, Store().read, metrics, 100, 1 << 20,
                        encoding=SSE_EVENTS, transport=STREAM)
    for conn in (first, second, stream):
        assert await registry.register(conn)
        conn.start_at(0)
    await Signals(broker, metrics, "").send([USER, USER + 1], TYPING)
    typing = orjson.dumps(TYPING)
    assert first_out.frames == second_out.frames == [text_frame(typing)]
    assert stream_out.frames == [b"event: typing\ndata: " + typing + b"\n\n"]  # SSE, no id line
    assert first.delivered == second.delivered == stream.delivered == 0
    assert metrics.signals_sent._value.get() == 2  # one per recipient, the unconnected one too


async def test_a_stream_writes_signals_without_an_id_and_is_cut_when_they_go_unread() -> None:
    metrics = Metrics()
    # the stream's outlet with no response task writing it out: a client that reads nothing
    api = SimpleNamespace(settings=SimpleNamespace(ws_queue_max_bytes=1000), metrics=metrics,
                          close_timeout=5.0)
    outlet = StreamOutlet(api)  # type: ignore[arg-type]
    conn = Connection(USER, 2**40, outlet, Store().read, metrics, 100, 1000,
                      encoding=SSE_EVENTS, transport=STREAM)
    conn.start_at(0)
    typing = SSE_EVENTS.encode_signal(orjson.dumps(TYPING))
    conn.signal(typing)
    assert outlet._chunks == [typing] and not typing.startswith(b"id:")
    for _ in range(1000 // len(typing) + 1):
        conn.signal(typing)
    assert metrics.slow_consumer_disconnects.labels(STREAM)._value.get() == 1
    assert outlet._chunks == [end_message(*ending(SlowConsumer("")))]  # the unsent dropped
    conn.signal(typing)  # after the end: dropped
    assert len(outlet._chunks) == 1
    if outlet._deadline is not None:
        outlet._deadline.cancel()


async def test_a_stream_socket_writes_signals_as_chunks_without_an_id_and_is_cut_when_unread() -> None:
    metrics = Metrics()
    left: list[Connection] = []
    api = SimpleNamespace(settings=SimpleNamespace(ws_ping_interval=60), metrics=metrics,
                          close_timeout=5.0, registry=SimpleNamespace(unregister=left.append),
                          keepalive=KeepaliveWheel(60))
    hub_end, peer = socket.socketpair()
    hub_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.setblocking(False)
    stream = StreamSocket(api)  # type: ignore[arg-type]
    conn = Connection(USER, 2**40, stream, Store().read, metrics, 100, 1000,
                      encoding=SSE_EVENTS, transport=STREAM)
    stream.attach(conn, b"id: e:")
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: stream, sock=hub_end)
    stream.start(set(), True, b"welcome\n\n", 0, None)
    typing = SSE_EVENTS.encode_signal(orjson.dumps(TYPING))
    conn.signal(typing)
    expected = b"9\r\nwelcome\n\n\r\n%x\r\n%s\r\n" % (len(typing), typing)
    async with asyncio.timeout(5):
        received = b""
        while len(received) < len(expected):
            received += await loop.sock_recv(peer, 65536)
    assert received == expected and not typing.startswith(b"id:")
    for _ in range(100_000):  # the peer reads no more: the kernel's buffers fill, then the bound
        conn.signal(typing)
        if metrics.slow_consumer_disconnects.labels(STREAM)._value.get():
            break
    assert metrics.slow_consumer_disconnects.labels(STREAM)._value.get() == 1
    await asyncio.sleep(0)
    assert left == [conn]  # the registry is left at once, not when the peer has read the end
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(peer, 65536):
            received += chunk
    assert received.endswith(b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(end := end_message(*ending(SlowConsumer("")))), end))
    peer.close()


async def test_memory_presence_announces_changes_once_and_not_a_quick_reconnect() -> None:
    heard: list[tuple[int, bool]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        heard.extend((user_id, online) for user_id in user_ids)

    presence = Presence(MemoryPresence(), Metrics(), grace=0.05)
    presence.listen(listener)
    presence.arrived(1)
    presence.left(1)
    presence.arrived(1)  # a reconnect within the grace
    await asyncio.sleep(0.2)
    assert heard == [(1, True)]
    assert await presence.online([2, 1]) == [1]
    presence.left(1)
    async with asyncio.timeout(5):
        while len(heard) < 2:
            await asyncio.sleep(0.01)
    assert heard == [(1, True), (1, False)]
    assert await presence.online([1]) == []
    await presence.close()


async def test_redis_presence_counts_processes_and_sweeps_a_dead_one(redis_url: str) -> None:
    prefix = f"test-presence-{uuid.uuid4().hex}:"
    first, second = (RedisPresence(redis_url, prefix, ttl=2.0) for _ in range(2))
    try:
        assert await first.heartbeat([]) == ([], [], 0)
        await second.heartbeat([])
        assert await first.arrive(1) is True  # online: announce
        assert await second.arrive(1) is False  # another device, another process: nothing new
        assert await first.leave(1) is False  # still held by the second
        assert await second.leave(1) is True  # held by none: settle after the grace
        assert await second.arrive(1) is False  # back within the grace: still shown online
        assert await second.leave(1) is True
        assert await first.settle(1) is True  # offline: announced by exactly one caller
        assert await second.settle(1) is False
        assert await first.online([1]) == set()

        assert await first.arrive(2) is True
        assert await first.online([1, 2]) == {2}
        await asyncio.sleep(2.2)  # the first process stops heartbeating (as if killed)
        offline, again, count = await second.heartbeat([])
        assert (offline, again, count) == ([2], [], 0)
        # the first one was only paused: its next heartbeat holds its users again
        offline, again, count = await first.heartbeat([2])
        assert (offline, again, count) == ([], [2], 1)
        assert await second.close() == []
        assert await first.close() == [2]  # a graceful stop announces its users offline
    finally:
        for store in (first, second):
            await store._redis.aclose()


async def test_redis_presence_applies_a_batch_in_order_and_settles_many_at_once(
        redis_url: str) -> None:
    store = RedisPresence(redis_url, f"test-presence-{uuid.uuid4().hex}:", ttl=2.0)
    try:
        await store.heartbeat([])
        changes = [(True, 1), (True, 2), (False, 1), (True, 1), (False, 2), (False, 3)]
        # 1: online, gone, back (still shown: nothing to announce); 2: online, gone; 3: unknown
        assert await store.apply(changes) == [True, True, True, False, True, False]
        assert await store.online([1, 2, 3]) == {1}
        assert await store.settle_many([1, 2]) == [2]  # 1 came back within the grace
        assert await store.settle_many([2]) == []  # announced once
        assert await store.apply([(True, 2)]) == [True]
    finally:
        await store.close()


async def test_redis_presence_counts_thousands_of_users_in_one_call(redis_url: str) -> None:
    """`apply` and `holders` each pack their users into one argument; `holders` answers only the
    online ones, with how many processes hold each (its script reads them 1,000 at a time)."""
    prefix = f"test-presence-{uuid.uuid4().hex}:"
    first, second = (RedisPresence(redis_url, prefix, ttl=2.0) for _ in range(2))
    try:
        await first.heartbeat([])
        await second.heartbeat([])
        assert await first.apply([(True, user) for user in range(1, 2501)]) == [True] * 2500
        evens = [(True, user) for user in range(2, 2501, 2)]
        assert await second.apply(evens) == [False] * 1250
        expected = {user: 2 if user % 2 == 0 else 1 for user in range(1, 2501)}
        assert await first.holders(range(1, 3001)) == expected
        assert await first.holders([]) == {}
        # second: 1 was never its own, 2 is still held by first; first: nobody holds 1 now
        assert await second.apply([(False, 1), (False, 2), (False, 2)]) == [False, False, False]
        assert await first.apply([(False, 1)]) == [True]
        assert await second.holders([1, 2, 3, 2**31 - 1]) == {2: 1, 3: 1}
    finally:
        await first.close()
        await second.close()


class _CountingStore(MemoryPresence):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def apply(self, changes: Sequence[tuple[bool, int]]) -> list[bool]:
        self.calls.append(len(changes))
        return await super().apply(changes)

    async def settle_many(self, user_ids: Sequence[int]) -> list[int]:
        self.calls.append(len(user_ids))
        return await super().settle_many(user_ids)


async def test_a_storm_of_users_is_a_few_store_calls_and_announcements_not_one_per_user() -> None:
    heard: list[tuple[int, bool]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        heard.append((len(user_ids), online))

    store = _CountingStore()
    presence = Presence(store, Metrics(), grace=0.05)
    presence.listen(listener)
    for user_id in range(1, 1501):  # all at once, as a reconnect storm comes in
        presence.arrived(user_id)
    async with asyncio.timeout(5):
        while sum(n for n, _ in heard) < 1500:
            await asyncio.sleep(0.01)
    for user_id in range(1, 1501):
        presence.left(user_id)
    async with asyncio.timeout(5):
        while sum(n for n, online in heard if not online) < 1500:
            await asyncio.sleep(0.01)
    assert store.calls == [1000, 500, 1000, 500, 1000, 500]  # changes, then settles, by BATCH
    assert heard == [(1500, True), (1500, False)]  # one announcement per round
    await presence.close()


class _FlakyStore(MemoryPresence):
    """Memory presence whose next change fails once (Redis away for a moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = True

    async def apply(self, changes: Sequence[tuple[bool, int]]) -> list[bool]:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("Redis is away")
        return await super().apply(changes)


async def test_a_change_the_store_missed_is_retried_by_the_next_heartbeat() -> None:
    heard: list[tuple[int, bool]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        heard.extend((user_id, online) for user_id in user_ids)

    presence = Presence(_FlakyStore(), Metrics(), grace=0.05)
    presence.listen(listener)
    presence.arrived(1)
    async with asyncio.timeout(5):
        while not presence._retry:  # the worker tried, and failed
            await asyncio.sleep(0.01)
    assert heard == [] and await presence.online([1]) == []
    await presence.step()
    async with asyncio.timeout(5):
        while not heard:
            await asyncio.sleep(0.01)
    assert heard == [(1, True)] and await presence.online([1]) == [1]
    await presence.close()
