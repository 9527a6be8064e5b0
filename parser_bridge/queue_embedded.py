"""The parse job queue without Redis: a few fetcher loops inside the hub process.

For a single-process hub (no REDIS_URL) this keeps `POST /api/v1/parse` working out of the
box with the same fetcher, limits and address policy as `python -m parser_bridge.worker`.
Jobs and unread results live in memory: a restart loses the jobs in flight, and their
requests then fail with `timeout` like any request nobody answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from hub.feature import Loop
from parser_bridge.fetch import PageFetcher
from parser_bridge.job_queue import QueueUnavailable


class EmbeddedJobQueue:
    def __init__(self, fetcher: PageFetcher, *, concurrency: int = 4, max_jobs: int = 1000,
                 result_ttl: float = 300.0) -> None:
        self._fetcher = fetcher
        self._concurrency = concurrency
        self._jobs: asyncio.Queue[tuple[int, str]] = asyncio.Queue(maxsize=max_jobs)
        self._results: dict[int, tuple[float, bytes]] = {}
        self._result_ttl = result_ttl

    async def push(self, jobs: Sequence[tuple[int, str]]) -> None:
        for job in jobs:
            try:
                self._jobs.put_nowait(job)
            except asyncio.QueueFull:
                raise QueueUnavailable(f"the embedded parser has {self._jobs.maxsize} jobs waiting") from None

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
        request_id, url = await self._jobs.get()
        result = await self._fetcher.parse(url)
        self._forget_stale()  # answers nobody collects (the request went final otherwise) expire
        self._results[request_id] = (time.monotonic(), result.encode())

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for stale in [i for i, (at, _) in self._results.items() if now - at > self._result_ttl]:
            del self._results[stale]
