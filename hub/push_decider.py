"""Web Push decisions (protocol §13), a supervised loop of every hub process; the sends are
hub/push_sender.py's.

- `flush_delivered` writes what this process's connections delivered (the `Registry`'s marks)
  to `push_users.delivered_id`, so every process judges "seen" alike.
- `decide` reads each subscribed user's stream past `scanned_id` up to the events committed
  `PUSH_DELAY` ago; an event in `PUSH_EVENTS` that no connection delivered and no feature's
  `seen` check (a chat's read marker) claims becomes one outbox row per subscription, and the
  scan moves past it in the same commit. User rows are locked with SKIP LOCKED, so processes
  split the users between them; the outbox's unique key keeps a push decided twice single.
  It runs when this process's commits become due (`committed`), and at least every
  DECIDE_SECONDS for the other processes' events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from hub import push_store
from hub.db import Database, rfc3339, utcnow
from hub.metrics import Metrics
from hub.push_rules import Notice, PushRule, default_notice, push_payload

SCAN_USERS = 1000  # users decided per transaction
SCAN_EVENTS = 100  # events per user per transaction (at most 100,000 events in one)
DECIDE_SECONDS = 1.0  # how long a decider waits for a commit of its process before looking again
MIN_WAKE_SECONDS = 0.5  # the least time between two decisions woken by this process's commits


class PushDecider:
    """Turns unseen events into outbox rows. `marks` returns this process's delivered marks."""

    def __init__(self, db: Database, metrics: Metrics, marks: Callable[[], dict[int, int]],
                 rules: Mapping[str, PushRule], events: tuple[str, ...], delay: float,
                 ttl: int, decided: Callable[[], None] = lambda: None) -> None:
        self._db = db
        self._decided = decided  # called after each commit that added pushes
        self._metrics = metrics
        self._marks = marks
        self._rules = rules
        self._events = frozenset(events)
        self._delay = dt.timedelta(seconds=delay)
        self._ttl = dt.timedelta(seconds=ttl)
        self._flushed: dict[int, int] = {}
        self._due = asyncio.Event()  # events of this process have become due
        self._last_commit = 0.0  # loop time of this process's last commit of events
        self._timer: asyncio.TimerHandle | None = None
        self._last_wake = 0.0

    def committed(self) -> None:
        """Events were committed by this process: decide them as soon as PUSH_DELAY has passed
        (other processes' events wait for the next look, at most DECIDE_SECONDS)."""
        loop = asyncio.get_running_loop()
        self._last_commit = loop.time()
        if self._timer is None:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        when = max(self._last_commit + self._delay.total_seconds(), self._last_wake + MIN_WAKE_SECONDS)
        self._timer = loop.call_at(when + 0.01, self._fire)  # past the due time on any clock

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer, self._last_wake = None, loop.time()
        self._due.set()
        if self._last_commit + self._delay.total_seconds() > self._last_wake:
            self._arm(loop)  # commits since this wake was armed become due later

    async def step(self) -> None:
        """Decide what is due, then wait up to DECIDE_SECONDS for this process's next commit
        to become due."""
        self._due.clear()
        await self.decide()
        if not self._due.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DECIDE_SECONDS):
                    await self._due.wait()

    async def flush_delivered(self) -> None:
        marks = self._marks()
        changed = {user: mark for user, mark in marks.items() if mark > self._flushed.get(user, 0)}
        if changed:
            async with self._db.sessions.begin() as session:
                await push_store.record_delivered(session, changed)
        # Forget users with no connection left here: their mark is in the database now.
        self._flushed = {user: max(mark, self._flushed.get(user, 0)) for user, mark in marks.items()}

    async def decide(self) -> None:
        after = 0
        while True:
            async with self._db.sessions.begin() as session:
                scans = await push_store.claim_scans(session, utcnow() - self._delay, SCAN_USERS,
                                                     SCAN_EVENTS, after)
                pushes: list[push_store.NewPush] = []
                scanned: dict[int, int] = {}
                for scan in scans:
                    for event in scan.events:
                        if event.name in self._events and scan.subscription_ids:
                            pushes.extend(await self._decide(session, scan, event))
                    if scan.events:
                        scanned[scan.user_id] = scan.events[-1].id
                await push_store.advance_scans(session, scanned)
                await push_store.enqueue(session, self._db.dialect, pushes)
            if pushes:
                self._decided()
            if len(scans) < SCAN_USERS:
                return
            # On after the users just decided, but not past one that may have more events due.
            full = [scan.user_id for scan in scans if len(scan.events) == SCAN_EVENTS]
            after = min(full) - 1 if full else scans[-1].user_id

    async def _decide(self, session: Any, scan: push_store.UserScan,
                      event: push_store.DueEvent) -> list[push_store.NewPush]:
        data = orjson.loads(event.data)
        rule = self._rules.get(event.name)
        seen = event.id <= scan.delivered_id
        if not seen and rule is not None and rule.seen is not None:
            try:
                seen = await rule.seen(session, scan.user_id, data)
            except (KeyError, TypeError, ValueError):  # published data of another shape
                seen = False
        if seen:
            self._metrics.push_sent.labels("seen").inc(len(scan.subscription_ids))
            return []
        notice: Notice = default_notice(event.name)
        if rule is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                notice = rule.describe(data)
        payload = push_payload(notice, event.id, event.name, event.data, rfc3339(event.created_at))
        expires_at = event.created_at + self._ttl
        return [push_store.NewPush(sub_id, event.id, payload, notice.topic, expires_at,
                                   notice.position) for sub_id in scan.subscription_ids]
