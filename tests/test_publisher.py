"""The publisher hands batches to the broker in the order they were handed over, together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hub.broker import BrokerUnavailable
from hub.broker_memory import MemoryBroker
from hub.db import Database
from hub.metrics import Metrics
from hub.publisher import Publisher
from hub.streams import StoredEvent


class GatedBroker(MemoryBroker):
    """A real in-process broker whose publishes wait at a gate, like a slow network."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.calls: list[list[bytes]] = []
        self.fail = False

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.calls.append([payload for _, payload in messages])
        await self.gate.wait()
        if self.fail:
            raise BrokerUnavailable("down")
        await super().publish(messages)


def _event(user_id: int, event_id: int) -> StoredEvent:
    return StoredEvent(user_id, event_id, b'{"id":%d}' % event_id, 0.0)


async def test_batches_handed_over_while_one_is_in_flight_follow_it_in_order_in_one_call() -> None:
    broker, received = GatedBroker(), []
    await broker.open(lambda _channel, payload: received.append(payload), lambda: None)
    await broker.subscribe("notifications:7")
    publisher = Publisher(Database("sqlite+aiosqlite://"), broker, Metrics())
    async with asyncio.timeout(5):
        first = asyncio.create_task(publisher.publish([_event(7, 1)]))
        await asyncio.sleep(0)  # the sender takes the first batch and waits at the gate
        rest = [asyncio.create_task(publisher.publish([_event(7, n)])) for n in (2, 3, 4)]
        await asyncio.sleep(0)
        broker.gate.set()
        assert await asyncio.gather(first, *rest) == [True] * 4
    assert broker.calls == [[b'{"id":1}'], [b'{"id":2}', b'{"id":3}', b'{"id":4}']]
    assert received == [b'{"id":%d}' % n for n in (1, 2, 3, 4)]


async def test_a_failed_publish_answers_false_to_every_batch_in_it() -> None:
    broker = GatedBroker()
    broker.fail = True
    broker.gate.set()
    await broker.open(lambda _channel, _payload: None, lambda: None)
    publisher = Publisher(Database("sqlite+aiosqlite://"), broker, Metrics())
    async with asyncio.timeout(5):
        answers = await asyncio.gather(*(publisher.publish([_event(1, n)]) for n in (1, 2)))
        assert answers == [False, False]
        broker.fail = False
        assert await publisher.publish([_event(1, 3)]) is True
