"""After commit: events go to the broker; whatever did not make it is relayed later.

Events reach the broker in the order their transactions resumed after commit, which for one
user's stream is commit order (a later writer waited for the earlier one's row lock): one
sender task takes every batch handed over so far and publishes them together, in order, on one
connection. Concurrent publishes on separate connections could overtake each other, and a
socket that sees id 7 before id 6 has to read the store to fill the gap.

The publish after commit is best effort. Which ids reached the broker is remembered in
memory and written to each stream's `published_id` by `flush_watermarks`; `relay` republishes
events of streams whose watermark lags once they have been quiet for `settle` seconds (a
crash between commit and publish, or a broker outage). Republishing can repeat an event, which
connections drop by id: delivery to a connection stays exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from hub import streams
from hub.batching import Batcher
from hub.broker import Broker, BrokerUnavailable, user_channel
from hub.db import Database, utcnow
from hub.metrics import Metrics
from hub.streams import StoredEvent

log = logging.getLogger("hub.publisher")
RELAY_BATCH = 5000


class Publisher:
    def __init__(self, db: Database, broker: Broker, metrics: Metrics, channel_prefix: str = "",
                 settle: float = 2.0) -> None:
        self._db = db
        self._broker = broker
        self._metrics = metrics
        self._prefix = channel_prefix
        self._settle = settle
        self._published: dict[int, int] = {}
        self._batches: Batcher[Sequence[StoredEvent], bool] = Batcher(self._send, "publisher")

    async def publish(self, events: Sequence[StoredEvent]) -> bool:
        """Hand events to the broker, after every batch handed over before; never raises. False
        when the relay will have to do it."""
        return await self._batches.submit(events)

    async def _send(self, batches: list[Sequence[StoredEvent]]) -> list[bool]:
        events = [event for batch in batches for event in batch]
        try:
            await self._broker.publish([(user_channel(self._prefix, e.user_id), e.payload)
                                        for e in events])
        except BrokerUnavailable as exc:
            log.warning("broker unavailable, %d events left to the relay: %s", len(events), exc)
            return [False] * len(batches)
        except Exception:
            log.exception("publishing %d events failed; the relay will", len(events))
            return [False] * len(batches)
        self._metrics.events_published.inc(len(events))
        published = self._published
        for event in events:
            if published.get(event.user_id, 0) < event.id:
                published[event.user_id] = event.id
        return [True] * len(batches)

    async def close(self) -> None:
        """At shutdown: let the batches handed over reach the broker, then record them."""
        await self._batches.wait_idle()
        await self.flush_watermarks()

    async def flush_watermarks(self) -> None:
        """Record which ids reached the broker (a loop step)."""
        if not self._published:
            return
        pending, self._published = self._published, {}
        try:
            async with self._db.single_statement() as conn:
                await streams.mark_published(conn, pending)
        except BaseException:
            for user_id, event_id in pending.items():
                if self._published.get(user_id, 0) < event_id:
                    self._published[user_id] = event_id
            raise

    async def relay(self) -> None:
        """Republish events that committed but never reached the broker (a loop step)."""
        settled = utcnow() - dt.timedelta(seconds=self._settle)
        async with self._db.sessions() as session:
            lagging = await streams.unpublished(session, settled)
            if not lagging:
                return
            events = await streams.read_unpublished(session, [user_id for user_id, _, _ in lagging],
                                                    RELAY_BATCH)
        if events and not await self.publish(events):
            return
        self._metrics.relayed_events.inc(len(events))
        reached = {user_id: last_id for user_id, _, last_id in lagging}
        if len(events) == RELAY_BATCH:  # streams past the batch's last one keep their lag
            cut = events[-1]
            reached = {user_id: (last if user_id < cut.user_id else cut.id)
                       for user_id, last in reached.items() if user_id <= cut.user_id}
        async with self._db.single_statement() as conn:
            await streams.mark_published(conn, reached)
