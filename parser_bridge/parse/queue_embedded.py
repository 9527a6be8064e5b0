"""The parse job queue without Redis: a few fetch slots inside the hub process.

For a single-process hub (no REDIS_URL) this keeps `POST /api/v1/parse` working out of the
box with the same fetcher, limits, address policy and fairness between users (`fair_queue`)
as `python -m parser_bridge.worker`. Jobs and unread results live in memory: a restart loses
the jobs in flight, and their requests then fail with `timeout` like any request nobody
answered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from hub.feature import Loop
from parser_bridge.parse.fair_queue import FairQueue, QueueFull
from parser_bridge.parse.fetch import PageFetcher
from parser_bridge.parse.job_queue import Job, QueueUnavailable


class EmbeddedJobQueue:
    """`concurrency` fetch slots, at most `per_user` of them for one user's jobs."""

    def __init__(self, fetcher: PageFetcher, *, concurrency: int = 4, per_user: int = 2,
                 max_jobs: int = 1000, result_ttl: float = 300.0) -> None:
        self._fetcher = fetcher
        self._concurrency = concurrency
        self._jobs: FairQueue[tuple[int, str]] = FairQueue(slots=concurrency, per_user=per_user,
                                                           max_waiting=max_jobs)
        self._results: dict[int, tuple[float, bytes]] = {}
        self._result_ttl = result_ttl

    async def push(self, jobs: Sequence[Job]) -> None:
        for request_id, url, user_id in jobs:
            try:
                await self._jobs.put(user_id, (request_id, url))
            except QueueFull as exc:
                raise QueueUnavailable(f"the embedded parser is full: {exc}") from None

    def may_hold_results(self) -> bool:
        return bool(self._results)

    async def take_results(self, request_ids: Sequence[int]) -> Mapping[int, bytes]:
        self._forget_stale()
        return {i: self._results[i][1] for i in request_ids if i in self._results}

    async def discard_results(self, request_ids: Sequence[int]) -> None:
        for request_id in request_ids:
            self._results.pop(request_id, None)

    def loops(self) -> Sequence[Loop]:
        return tuple(Loop(f"embedded parser {n}", self._work_one, 0.0)
                     for n in range(1, self._concurrency + 1))

    async def _work_one(self) -> None:
        taken = await self._jobs.get()
        if taken is None:
            return
        user, (request_id, url) = taken
        try:
            result = await self._fetcher.parse(url)
        finally:
            await self._jobs.done(user)
        self._forget_stale()  # answers nobody collects (the request went final otherwise) expire
        self._results[request_id] = (time.monotonic(), result.encode())

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for stale in [i for i, (at, _) in self._results.items() if now - at > self._result_ttl]:
            del self._results[stale]
