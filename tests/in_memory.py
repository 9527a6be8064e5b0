"""In-memory stand-ins for the delivery core's boundaries, for its unit tests: the socket side
a `Connection` writes to (`Outlet`) and a user's stream in the store (`Store`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from hub.connection import ConnectionEnded
from hub.streams import StoredEvent

USER = 7
NOW = 1_800_000_000.0


class Outlet:
    """The socket side in memory: what was written, a settable send buffer, a drain gate."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.backlog = 0  # what `buffered()` reports
        self.writable = asyncio.Event()
        self.writable.set()
        self.drains = 0
        self.reasons: list[ConnectionEnded] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    write_signal = write

    def buffered(self) -> int:
        return self.backlog

    async def drain(self) -> None:
        self.drains += 1
        await self.writable.wait()

    def ended(self, reason: ConnectionEnded) -> None:
        self.reasons.append(reason)

    @property
    def ids(self) -> list[int]:
        return [int(frame[frame.index(b'"id":') + 5:frame.index(b",", frame.index(b'"id":'))])
                for frame in self.frames]


def payload(event_id: int) -> bytes:
    return b'{"id":%d,"name":"e","data":{},"created_at":"2026-12-07T00:00:00.000Z"}' % event_id


class Store:
    """A user's stream in memory, read as `StreamReads.events` reads it; reads can be held
    at a gate or fail."""

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self.events = {i: StoredEvent(USER, i, payload(i), NOW - 1) for i in ids}
        self.reads: list[tuple[int, int, int | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def add(self, *ids: int) -> None:
        for i in ids:
            self.events[i] = StoredEvent(USER, i, payload(i), NOW - 1)

    async def read(self, user_id: int, after: int, limit: int, up_to: int | None) -> list[StoredEvent]:
        assert user_id == USER
        self.reads.append((after, limit, up_to))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        ids = sorted(i for i in self.events if i > after and (up_to is None or i <= up_to))
        return [self.events[i] for i in ids[:limit]]
