"""One contract for every broker: the in-process MemoryBroker and the RedisBroker on real Redis.

Redis pub/sub channels are server-wide (not per db), so every channel name carries this run's id
and a counter; the Redis-only tests at the end check what the memory broker has no notion of:
one multiplexed pub/sub connection per broker, and a clear error when Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from hub.broker import Broker, BrokerUnavailable
from hub.broker_memory import MemoryBroker
from hub.broker_redis import RedisBroker
from hub.broker_redis_cluster import RedisClusterBroker
from tests.conftest import REDIS_BASE_URL, RUN_ID, free_port
from tests.redis_cluster import redis_cluster  # noqa: F401  (the fixture, for the cluster case)

WAIT = 5.0
_ids = itertools.count(1)


def channel(label: str = "c") -> str:
    return f"test{RUN_ID}:contract:{label}:{next(_ids)}"


class Inbox:
    """What a broker delivered, per channel, in delivery order."""

    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.resyncs = 0
        self._changed = asyncio.Event()

    def deliver(self, channel: str, payload: bytes) -> None:
        self.messages[channel].append(payload)
        self._changed.set()

    def on_resync(self) -> None:
        self.resyncs += 1

    async def wait_for(self, channel: str, count: int, timeout: float = WAIT) -> list[bytes]:
        """The first `count` payloads of `channel`; fails when they do not arrive in time."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages[channel]) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            got = len(self.messages[channel])
            pytest.fail(f"{channel}: {got} of {count} messages within {timeout}s")
        return self.messages[channel][:count]


class BrokerUnderTest:
    def __init__(self, broker: Broker, inbox: Inbox, client_name: str | None) -> None:
        self.broker = broker
        self.inbox = inbox
        self.client_name = client_name

    async def subscribe(self, *channels: str) -> None:
        async with asyncio.timeout(WAIT):
            for name in channels:
                await self.broker.subscribe(name)

    async def publish(self, *messages: tuple[str, bytes]) -> None:
        async with asyncio.timeout(WAIT):
            await self.broker.publish(list(messages))

    async def settle(self) -> str:
        """Publish a marker on a fresh channel and wait for it: everything published before it on
        this broker has been delivered by then (one connection keeps the order of publishes)."""
        marker = channel("marker")
        await self.subscribe(marker)
        await self.publish((marker, b"marker"))
        await self.inbox.wait_for(marker, 1)
        return marker


_names = itertools.count(1)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def broker_url(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The kind of broker and its URL: none for memory, the run's Redis, or the test cluster
    (resolved here: a sync fixture may request the async `redis_url` fixture lazily, an async
    one may not)."""
    if request.param == "memory":
        return "memory", None
    if request.param == "redis":
        return "redis", str(request.getfixturevalue("redis_url"))
    return "redis-cluster", request.getfixturevalue("redis_cluster").url


@pytest.fixture
async def under_test(broker_url: tuple[str, str | None]) -> AsyncIterator[BrokerUnderTest]:
    client_name: str | None = None
    broker: Broker
    kind, url = broker_url
    if url is None:
        broker = MemoryBroker()
    elif kind == "redis":
        client_name = f"hub-test-{RUN_ID}-{next(_names)}"
        broker = RedisBroker(url, client_name=client_name)
    else:
        broker = RedisClusterBroker(url, client_name=f"hub-test-{RUN_ID}-{next(_names)}")
    inbox = Inbox()
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync)
    try:
        yield BrokerUnderTest(broker, inbox, client_name)
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()


async def test_subscribe_then_publish_delivers(under_test: BrokerUnderTest) -> None:
    name = channel()
    await under_test.subscribe(name)
    await under_test.publish((name, b'{"id":1}'))
    assert await under_test.inbox.wait_for(name, 1) == [b'{"id":1}']


async def test_publish_order_is_kept_per_channel(under_test: BrokerUnderTest) -> None:
    first, second = channel("first"), channel("second")
    await under_test.subscribe(first, second)
    expected: dict[str, list[bytes]] = {first: [], second: []}
    for index in range(300):
        target = first if index % 3 else second
        payload = b"%d" % index
        expected[target].append(payload)
        await under_test.publish((target, payload))  # one publish call per message
    assert await under_test.inbox.wait_for(first, len(expected[first])) == expected[first]
    assert await under_test.inbox.wait_for(second, len(expected[second])) == expected[second]
    await under_test.settle()
    assert under_test.inbox.messages[first] == expected[first]  # and nothing more
    assert under_test.inbox.messages[second] == expected[second]


async def test_unsubscribe_stops_delivery(under_test: BrokerUnderTest) -> None:
    gone, kept = channel("gone"), channel("kept")
    await under_test.subscribe(gone, kept)
    await under_test.publish((gone, b"before"))
    await under_test.inbox.wait_for(gone, 1)
    async with asyncio.timeout(WAIT):
        await under_test.broker.unsubscribe(gone)
    await under_test.publish((gone, b"after"), (kept, b"still here"))
    assert await under_test.inbox.wait_for(kept, 1) == [b"still here"]
    await under_test.settle()
    assert under_test.inbox.messages[gone] == [b"before"]


async def test_unsubscribe_of_an_unknown_channel_is_harmless(under_test: BrokerUnderTest) -> None:
    async with asyncio.timeout(WAIT):
        await under_test.broker.unsubscribe(channel("never-subscribed"))
    await under_test.settle()


async def test_subscribe_is_idempotent(under_test: BrokerUnderTest) -> None:
    name = channel()
    await under_test.subscribe(name, name, name)
    await under_test.publish((name, b"once"))
    await under_test.inbox.wait_for(name, 1)
    await under_test.settle()
    assert under_test.inbox.messages[name] == [b"once"]
    # a set, not a count: reference counting of sockets is the registry's job
    async with asyncio.timeout(WAIT):
        await under_test.broker.unsubscribe(name)
    await under_test.publish((name, b"after unsubscribe"))
    await under_test.settle()
    assert under_test.inbox.messages[name] == [b"once"]


async def test_many_channels_share_one_broker(under_test: BrokerUnderTest) -> None:
    names = [channel("many") for _ in range(300)]
    async with asyncio.timeout(WAIT * 2):
        await asyncio.gather(*(under_test.broker.subscribe(name) for name in names))
    await under_test.publish(*((name, name.encode()) for name in names))
    for name in names:
        assert await under_test.inbox.wait_for(name, 1) == [name.encode()]
    if under_test.client_name is not None:
        connections = await pubsub_connections(under_test.client_name)
        assert len(connections) == 1, connections
        assert int(connections[0]["sub"]) >= len(names)


async def test_publish_of_a_batch(under_test: BrokerUnderTest) -> None:
    one, two, unheard = channel("one"), channel("two"), channel("unheard")
    await under_test.subscribe(one, two)
    batch = [(one, b"1a"), (two, b"2a"), (unheard, b"xa"), (one, b"1b"), (two, b"2b"), (one, b"1c")]
    await under_test.publish(*batch)
    assert await under_test.inbox.wait_for(one, 3) == [b"1a", b"1b", b"1c"]
    assert await under_test.inbox.wait_for(two, 2) == [b"2a", b"2b"]
    await under_test.publish()  # an empty batch is fine
    await under_test.settle()
    assert unheard not in under_test.inbox.messages
    assert len(under_test.inbox.messages[one]) == 3


async def test_ping(under_test: BrokerUnderTest) -> None:
    async with asyncio.timeout(WAIT):
        await under_test.broker.ping()  # raises BrokerUnavailable when unreachable
    assert under_test.inbox.resyncs == 0  # nothing was lost, nothing to re-read


# Redis only ---------------------------------------------------------------------------------


async def pubsub_connections(client_name: str) -> list[dict[str, str]]:
    """Connections of the Redis server named `client_name` (the broker names its pub/sub one)."""
    admin = aioredis.from_url(REDIS_BASE_URL, decode_responses=True)
    try:
        async with asyncio.timeout(WAIT):
            clients = await admin.client_list()
    finally:
        await admin.aclose()
    return [dict(c) for c in clients if c.get("name") == client_name]


async def test_redis_broker_keeps_one_pubsub_connection(redis_url: str) -> None:
    client_name = f"hub-test-{RUN_ID}-{next(_names)}"
    broker = RedisBroker(redis_url, client_name=client_name)
    inbox = Inbox()
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync)
    try:
        assert len(await pubsub_connections(client_name)) == 1  # open before any channel
        names = [channel("conn") for _ in range(50)]
        async with asyncio.timeout(WAIT * 2):
            await asyncio.gather(*(broker.subscribe(name) for name in names))
            await asyncio.gather(*(broker.unsubscribe(name) for name in names[:20]))
            await asyncio.gather(*(broker.subscribe(name) for name in names[:10]))
        async with asyncio.timeout(WAIT):
            while True:
                connections = await pubsub_connections(client_name)
                if len(connections) == 1 and connections[0]["sub"] == "40":
                    break
                await asyncio.sleep(0.05)
        for _ in range(20):  # publishing uses its own pool, never the subscribed connection
            await broker.publish([(name, b"x") for name in names])
        assert len(await pubsub_connections(client_name)) == 1
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()
    assert await pubsub_connections(client_name) == []  # close releases it


async def test_redis_broker_reports_an_unreachable_server() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", client_name=f"hub-test-{RUN_ID}-dead")
    inbox = Inbox()
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync)  # does not fail: the listener keeps trying
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(BrokerUnavailable):
                await broker.ping()
            with pytest.raises(BrokerUnavailable):
                await broker.publish([(channel(), b"lost")])
            await broker.subscribe(channel())  # remembered for when Redis comes back
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()
    assert inbox.resyncs == 0
    with pytest.raises(BrokerUnavailable):
        await broker.publish([(channel(), b"closed")])
