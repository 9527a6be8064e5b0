"""Where the hub sends parse jobs and finds their results: Redis (`queue_redis`, the protocol of
§7, shared with any number of `python -m parser_bridge.worker` processes) or, without
REDIS_URL, inside the hub process itself (`queue_embedded`).

Both give at-least-once delivery of a result to `take_results`; the hub makes the first one
final and drops the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from hub.feature import Loop

Job = tuple[int, str, int]
"""`(request_id, url, user_id)`: the user lets parsers share their work fairly between users."""


class QueueUnavailable(Exception):
    """The queue could not be reached; the jobs stay unqueued and are pushed again later."""


class JobQueue(Protocol):
    async def push(self, jobs: Sequence[Job]) -> None:
        """Queue jobs; raises QueueUnavailable (then none or some were queued)."""
        ...

    def may_hold_results(self) -> bool:
        """False when certainly no result is waiting (saves the database a query)."""
        ...

    async def take_results(self, request_ids: Sequence[int]) -> Mapping[int, bytes]:
        """The raw results present for these ids, in as few round trips as possible."""
        ...

    async def discard_results(self, request_ids: Sequence[int]) -> None:
        """Forget results that were applied (or refused); best effort."""
        ...

    def loops(self) -> Sequence[Loop]:
        """Background loops the queue needs while the app runs."""
        ...
