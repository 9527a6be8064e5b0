"""Retention: streams keep the newest N events and nothing older than the age limit; expired
idempotency keys go too. Run as a supervised loop."""

from __future__ import annotations

import datetime as dt
import logging

from hub import idempotency, streams
from hub.db import Database, utcnow
from hub.metrics import Metrics

log = logging.getLogger("hub.retention")


class Retention:
    def __init__(self, db: Database, metrics: Metrics, keep_events: int, keep_seconds: int) -> None:
        self._db = db
        self._metrics = metrics
        self._keep_events = keep_events
        self._keep = dt.timedelta(seconds=keep_seconds)

    async def step(self) -> None:
        async with self._db.sessions.begin() as session:
            removed = await streams.trim(session, self._keep_events, utcnow() - self._keep)
            keys = await idempotency.expire(session)
        if removed or keys:
            self._metrics.trimmed_events.inc(removed)
            log.info("retention removed %d events and %d idempotency keys", removed, keys)
