"""The store reads of connecting and catching-up sockets, merged: every stream head and every
page of missed events asked for while a query is in flight goes into the next one, so a burst
of thousands of sockets (a deploy, a network blip) costs a few queries instead of two each.

Each read still sees the store as of a query that starts after it was asked for, so a socket
gets exactly what a read of its own would have given it. On PostgreSQL a batch is one
statement on an autocommit connection (arrays through `unnest`, a `LATERAL` page per request),
run by asyncpg itself;
on SQLite the batch's reads run one after another on one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from hub import streams
from hub.db import Database, rfc3339
from hub.models import Stream
from hub.streams import StoredEvent, StreamHead

MAX_BATCH = 2000  # requests per statement
IN_FLIGHT = 2  # statements of one kind at a time: one is being answered while the next fills
NO_LIMIT = 2**62

# asyncpg's own statements (prepared once per connection): a batch of one, the usual case
# outside a burst, costs a fraction of what SQLAlchemy's execution of it would
_HEADS = """
SELECT user_id, epoch, last_id, trimmed_id FROM streams WHERE user_id = ANY($1::integer[])
"""
_EVENTS = """
SELECT w.ord, e.id, e.name, e.data, e.created_at
FROM unnest($1::integer[], $2::bigint[], $3::bigint[], $4::integer[])
     WITH ORDINALITY AS w(user_id, after, up_to, lim, ord)
CROSS JOIN LATERAL (
    SELECT id, name, data, created_at FROM events
    WHERE events.user_id = w.user_id AND events.id > w.after AND events.id <= w.up_to
    ORDER BY events.id LIMIT w.lim
) e
ORDER BY w.ord, e.id
"""

Request = TypeVar("Request")
Result = TypeVar("Result")
EventsRequest = tuple[int, int, int, int | None]  # user id, after, limit, up to


class Merged(Generic[Request, Result]):
    """Runs `run` on the requests gathered while earlier batches were in flight (at most
    `in_flight` batches at a time, each of at most `max_batch` requests); `run` answers
    them in order. A failed batch fails each of its callers with its exception."""

    def __init__(self, run: Callable[[list[Request]], Awaitable[list[Result]]],
                 max_batch: int = MAX_BATCH, in_flight: int = IN_FLIGHT) -> None:
        self._run = run
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._pending: list[tuple[Request, asyncio.Future[Result]]] = []
        self._drains: set[asyncio.Task[None]] = set()

    async def ask(self, request: Request) -> Result:
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((request, answer))
        if len(self._drains) < self._in_flight:
            drain = asyncio.get_running_loop().create_task(self._drain(), name="merged-reads")
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await answer

    async def _drain(self) -> None:
        while self._pending:
            batch = [(request, answer) for request, answer in self._pending[:self._max_batch]
                     if not answer.done()]  # a caller that gave up (its socket closed) is skipped
            del self._pending[:self._max_batch]
            if not batch:
                continue
            try:
                results = await self._run([request for request, _ in batch])
            except Exception as exc:
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            except BaseException:  # cancelled (shutdown): so are its callers
                for _, answer in batch:
                    answer.cancel()
                raise
            for (_, answer), result in zip(batch, results, strict=True):
                if not answer.done():
                    answer.set_result(result)


class StreamReads:
    """Stream heads and pages of missed events for sockets, read in merged batches."""

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._heads: Merged[int, StreamHead | None] = Merged(self._read_heads, max_batch)
        self._events: Merged[EventsRequest, list[StoredEvent]] = Merged(self._read_events, max_batch)

    async def head(self, user_id: int) -> StreamHead | None:
        """The user's stream head, None when the user (and so the stream) does not exist."""
        return await self._heads.ask(user_id)

    async def events(self, user_id: int, after: int, limit: int, up_to: int | None) -> list[StoredEvent]:
        """Up to `limit` events with ids in (`after`, `up_to`], oldest first (`ReadEvents`)."""
        return await self._events.ask((user_id, after, limit, up_to))

    async def _read_heads(self, user_ids: list[int]) -> list[StreamHead | None]:
        async with self._db.readers.connect() as conn:
            if self._db.dialect != "postgresql":
                return [await _head(conn, user_id) for user_id in user_ids]
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            rows = await driver.fetch(_HEADS, sorted(set(user_ids)))
            heads = {user_id: StreamHead(epoch, last_id, trimmed_id)
                     for user_id, epoch, last_id, trimmed_id in rows}
        return [heads.get(user_id) for user_id in user_ids]

    async def _read_events(self, requests: list[EventsRequest]) -> list[list[StoredEvent]]:
        async with self._db.readers.connect() as conn:
            if self._db.dialect != "postgresql":
                return [await streams.read(conn, *request) for request in requests]
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            rows = await driver.fetch(
                _EVENTS, [user_id for user_id, _, _, _ in requests], [after for _, after, _, _ in requests],
                [NO_LIMIT if up_to is None else up_to for _, _, _, up_to in requests],
                [limit for _, _, limit, _ in requests])
            pages: list[list[StoredEvent]] = [[] for _ in requests]
            for number, event_id, name, data, created in rows:
                user_id = requests[number - 1][0]
                pages[number - 1].append(StoredEvent(
                    user_id, event_id,
                    streams.encode_payload(event_id, orjson.dumps(name), data.encode(), rfc3339(created)),
                    created.timestamp()))
        return pages


async def _head(conn: AsyncConnection, user_id: int) -> StreamHead | None:
    found = (await conn.execute(select(Stream.epoch, Stream.last_id, Stream.trimmed_id)
                                .where(Stream.user_id == user_id))).first()
    return StreamHead(*found) if found else None

