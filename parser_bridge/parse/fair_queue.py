"""Jobs shared fairly between users by a fixed number of fetch slots (protocol §7: one user's
slow pages never make another user's request time out).

A free slot takes the next job of the user with the fewest jobs in flight (round-robin among
equals), skipping a user who already has `per_user` jobs in flight; so a user with many slow
pages holds at most `per_user` slots, and a newcomer's job runs as soon as any slot frees (at
once if one is free). A job of no known user (an older hub's, without `user_id`) counts as its own user.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """`max_waiting` jobs are waiting already."""


class FairQueue(Generic[T]):
    """Waiting jobs per user for `slots` workers, each calling `get` and then `done` with the
    user key it got. One event loop; bounded by `max_waiting` waiting jobs."""

    def __init__(self, *, slots: int, per_user: int, max_waiting: int) -> None:
        if slots < 1 or per_user < 1 or max_waiting < 1:
            raise ValueError("slots, per_user and max_waiting must be at least 1")
        self.slots = slots
        self.per_user = per_user
        self.max_waiting = max_waiting
        self._waiting: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._in_flight: Counter[Hashable] = Counter()
        self._count = 0
        self._closed = False
        self._changed = asyncio.Condition()

    @property
    def waiting(self) -> int:
        return self._count

    @property
    def in_flight(self) -> int:
        return self._in_flight.total()

    def runnable(self) -> int:
        """How many waiting jobs a free slot could start now (their users are under the cap)."""
        return sum(min(len(jobs), self.per_user - self._in_flight[user])
                   for user, jobs in self._waiting.items() if self._in_flight[user] < self.per_user)

    def wants_more(self) -> bool:
        """True when a job taken now could start, or might be another user's: some slot would
        stay idle with the runnable jobs already here, and there is room to wait."""
        return (not self._closed and self._count < self.max_waiting
                and self.runnable() < self.slots - self.in_flight)

    async def put(self, user: int | None, job: T) -> None:
        """Add a job of `user` (None: a user of its own); raises QueueFull."""
        if self._count >= self.max_waiting:
            raise QueueFull(f"{self.max_waiting} parse jobs are waiting")
        key: Hashable = user if user is not None else object()
        self._waiting.setdefault(key, deque()).append(job)
        self._count += 1
        await self._notify()

    async def get(self) -> tuple[Hashable, T] | None:
        """The next job by the rule above and its user key, waiting for one; None once closed."""
        async with self._changed:
            while True:
                if self._closed:
                    return None
                found = self._pick()
                if found is not None:
                    return found
                await self._changed.wait()

    async def done(self, user: Hashable) -> None:
        """A job of `user` that `get` gave finished: its slot is free."""
        self._in_flight[user] -= 1
        if self._in_flight[user] <= 0:
            del self._in_flight[user]
        await self._notify()

    async def until_wanted(self) -> None:
        """Wait until `wants_more()` (forever once closed: bound it with a timeout)."""
        async with self._changed:
            await self._changed.wait_for(self.wants_more)

    async def close(self) -> None:
        """Hand out nothing more: `get` returns None (waiting jobs stay where they are)."""
        self._closed = True
        await self._notify()

    def _pick(self) -> tuple[Hashable, T] | None:
        # the user with the fewest jobs in flight; among equals, the one served longest ago
        user = min((u for u in self._waiting if self._in_flight[u] < self.per_user),
                   key=self._in_flight.__getitem__, default=None)
        if user is None:
            return None
        jobs = self._waiting[user]
        job = jobs.popleft()
        if jobs:
            self._waiting.move_to_end(user)
        else:
            del self._waiting[user]
        self._count -= 1
        self._in_flight[user] += 1
        return user, job

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
