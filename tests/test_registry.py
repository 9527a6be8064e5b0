"""The registry of a process's connections (`hub.registry.Registry`) on its own: reference-counted
broker subscriptions, dispatch of one frame to the right connections, the per-user cap, resync
and session revocation. A recording in-process broker and in-memory connections; no network."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from hub.broker_memory import MemoryBroker
from hub.connection import Connection, ConnectionEnded, SessionRevoked
from hub.metrics import Metrics
from hub.registry import Registry
from hub.streams import StoredEvent
from tests.in_memory import Outlet, payload

PREFIX = "test:"
WAIT = 5.0


class RecordingBroker(MemoryBroker):
    """The in-process broker, recording (un)subscribes; subscribes can be held at a gate or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))
        await super().unsubscribe(channel)


class Socket:
    """A connection with its in-memory outlet and an empty store."""

    def __init__(self, user_id: int, session_id: str = "s") -> None:
        self.outlet = Outlet()
        self.connection = Connection(user_id, 0.0, self.outlet, self._read, Metrics(), 100, 1 << 20,
                                     session_id, clock=lambda: 0.0)
        self.reads = 0

    async def _read(self, user_id: int, after: int, limit: int, up_to: int | None) -> list[StoredEvent]:
        self.reads += 1
        return []


async def make() -> tuple[Registry, RecordingBroker, Metrics]:
    broker, metrics = RecordingBroker(), Metrics()
    registry = Registry(broker, metrics, PREFIX, max_per_user=2)
    await broker.open(registry.dispatch, registry.resync)
    return registry, broker, metrics


async def started(registry: Registry, socket: Socket) -> bool:
    async with asyncio.timeout(WAIT):
        registered = await registry.register(socket.connection)
    if registered:
        socket.connection.start_at(0)
    return registered


async def until(condition: object, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not condition():  # type: ignore[operator]
                await asyncio.sleep(0)
    except TimeoutError:
        pytest.fail(f"not within {WAIT}s: {what}")


async def publish(broker: RecordingBroker, user_id: int, *ids: int) -> None:
    await broker.publish([(f"{PREFIX}notifications:{user_id}", payload(i)) for i in ids])


async def test_a_users_channel_is_subscribed_by_the_first_connection_and_unsubscribed_by_the_last() -> None:
    registry, broker, metrics = await make()
    first, second = Socket(1), Socket(1)
    assert await started(registry, first) and await started(registry, second)
    assert broker.calls == [("subscribe", "test:notifications:1")]
    assert registry.connection_count == 2
    registry.unregister(first.connection)
    registry.unregister(first.connection)  # twice: the socket's close and its finally
    for _ in range(5):
        await asyncio.sleep(0)
    assert broker.calls == [("subscribe", "test:notifications:1")]
    registry.unregister(second.connection)
    await until(lambda: len(broker.calls) == 2, "the unsubscribe")
    assert broker.calls[1] == ("unsubscribe", "test:notifications:1")
    assert registry.connection_count == 0
    assert metrics.connections.labels("ws")._value.get() == 0


async def test_connections_arriving_while_the_subscribe_is_in_flight_share_it() -> None:
    registry, broker, _ = await make()
    broker.gate.clear()
    first, second = Socket(1), Socket(1)
    registering = [asyncio.create_task(registry.register(s.connection)) for s in (first, second)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in registering)  # not before the channel is subscribed
    broker.gate.set()
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*registering) == [True, True]
    assert broker.calls == [("subscribe", "test:notifications:1")]


async def test_the_last_connection_leaving_during_the_subscribe_still_unsubscribes() -> None:
    registry, broker, _ = await make()
    broker.gate.clear()
    socket = Socket(1)
    registering = asyncio.create_task(registry.register(socket.connection))
    await asyncio.sleep(0)
    registering.cancel()  # the socket closed during the handshake
    with pytest.raises(asyncio.CancelledError):
        await registering
    broker.gate.set()
    await until(lambda: len(broker.calls) == 2, "the unsubscribe after the subscribe")
    assert [call for call, _ in broker.calls] == ["subscribe", "unsubscribe"]
    assert registry.connection_count == 0


async def test_a_failed_subscribe_fails_the_registration_and_leaves_nothing_behind() -> None:
    registry, broker, _ = await make()
    broker.fail = RuntimeError("broker down")
    socket = Socket(1)
    with pytest.raises(RuntimeError, match="broker down"):
        await registry.register(socket.connection)
    assert registry.connection_count == 0
    broker.fail = None
    assert await started(registry, Socket(1))  # a later socket subscribes afresh
    assert [call for call, _ in broker.calls].count("subscribe") == 2


async def test_the_per_user_cap_refuses_the_extra_connection_only() -> None:
    registry, _, _ = await make()
    assert await started(registry, Socket(1)) and await started(registry, Socket(1))
    assert not await registry.register(Socket(1).connection)
    assert await started(registry, Socket(2))  # another user is not affected
    assert registry.connection_count == 3


async def test_dispatch_offers_one_frame_to_each_connection_of_the_user_only() -> None:
    registry, broker, _ = await make()
    alice, alice_too, bob = Socket(1), Socket(1), Socket(2)
    for socket in (alice, alice_too, bob):
        assert await started(registry, socket)
    await publish(broker, 1, 1, 2)
    assert alice.outlet.ids == alice_too.outlet.ids == [1, 2]
    assert alice.outlet.frames[0] is alice_too.outlet.frames[0]  # encoded once for all
    assert bob.outlet.frames == []
    await publish(broker, 2, 1)
    assert bob.outlet.ids == [1] and alice.outlet.ids == [1, 2]


async def test_dispatch_ignores_other_channels_and_drops_malformed_payloads(
        caplog: pytest.LogCaptureFixture) -> None:
    registry, _, _ = await make()
    socket = Socket(1)
    assert await started(registry, socket)
    registry.dispatch("other:notifications:1", payload(1))  # another prefix's channel
    registry.dispatch(f"{PREFIX}notifications:9", payload(1))  # no local connection
    with caplog.at_level(logging.WARNING, "hub.registry"):
        registry.dispatch(f"{PREFIX}notifications:1", b'{"id":x,"name":"e"}')
    assert socket.outlet.frames == []
    assert "malformed payload" in caplog.text


async def test_resync_makes_every_connection_read_the_store() -> None:
    registry, _, metrics = await make()
    sockets = [Socket(1), Socket(2)]
    for socket in sockets:
        assert await started(registry, socket)
    registry.resync()
    await until(lambda: all(s.reads == 1 for s in sockets), "a catch-up read on each connection")
    assert metrics.broker_reconnects._value.get() == 1


async def test_close_sessions_ends_only_the_connections_of_revoked_sessions() -> None:
    registry, _, _ = await make()
    revoked, kept, other_user = Socket(1, "a"), Socket(1, "b"), Socket(2, "a")
    for socket in (revoked, kept, other_user):
        assert await started(registry, socket)
    registry.close_sessions([(1, "a"), (3, "a")])

    def reasons(socket: Socket) -> Sequence[type[ConnectionEnded]]:
        return [type(r) for r in socket.outlet.reasons]

    assert reasons(revoked) == [SessionRevoked]
    assert reasons(kept) == reasons(other_user) == []
