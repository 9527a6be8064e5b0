"""Retention: streams keep the newest N events and nothing older than the age limit; expired
idempotency keys go too. Run as a supervised loop."""

from __future__ import annotations

import datetime as dt
import logging

from hub import idempotency, streams
from hub.db import Database, utcnow
from hub.metrics import Metrics

log = logging.getLogger("hub.retention")
TRIM_BATCH = 200


class Retention:
    def __init__(self, db: Database, metrics: Metrics, keep_events: int, keep_seconds: int) -> None:
        self._db = db
        self._metrics = metrics
        self._keep_events = keep_events
        self._keep = dt.timedelta(seconds=keep_seconds)

    async def step(self) -> None:
        """Trim in short transactions of at most `TRIM_BATCH` streams, so no pass holds stream
        rows (which every publish to those users waits for) for long."""
        older_than = utcnow() - self._keep
        removed = 0
        while True:
            async with self._db.sessions.begin() as session:
                trimmed, events = await streams.trim(session, self._keep_events, older_than,
                                                     limit=TRIM_BATCH)
            removed += events
            if trimmed < TRIM_BATCH:
                break
        async with self._db.sessions.begin() as session:
            keys = await idempotency.expire(session)
        if removed or keys:
            self._metrics.trimmed_events.inc(removed)
            log.info("retention removed %d events and %d idempotency keys", removed, keys)
