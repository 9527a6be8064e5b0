"""The event store: every user's stream lives in the database, the system of record.

Appending takes the stream rows' locks in user-id order and increments `last_id`, so ids are
gapless per user and increase in commit order; the events are inserted in the same transaction
as the change that caused them. Query functions take a session and never commit.

On PostgreSQL the writes of many streams are set-based: user ids and event ids travel as
arrays and one statement locks, advances and inserts them all (`unnest`, `= ANY`), so a call
naming 1,000 users costs one statement and no per-row SQL compilation. SQLite, the embedded
single-process default, takes the portable path.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from hub.db import rfc3339, utcnow
from hub.models import Event, Stream

LOCK_CHUNK = 5000  # ids per IN (...) on SQLite
USER_IDS = bindparam("user_ids", type_=ARRAY(Integer))
EVENT_IDS = bindparam("event_ids", type_=ARRAY(BigInteger))
# Every stream row locked in user-id order (the order of every writer of several streams, so
# two of them cannot deadlock), advanced, and its event inserted, in one statement: the locks
# are held for that statement and the commit, and never across a round trip to the hub.
_APPEND = text("""
WITH locked AS MATERIALIZED (
    SELECT user_id FROM streams WHERE user_id = ANY(CAST(:user_ids AS INTEGER[]))
    ORDER BY user_id FOR UPDATE
), advanced AS (
    UPDATE streams SET last_id = streams.last_id + 1, updated_at = CAST(:created_at AS TIMESTAMPTZ)
    FROM locked WHERE streams.user_id = locked.user_id
    RETURNING streams.user_id, streams.last_id
)
INSERT INTO events (user_id, id, name, data, created_at)
SELECT user_id, last_id, CAST(:name AS TEXT), CAST(:data AS TEXT), CAST(:created_at AS TIMESTAMPTZ)
FROM advanced
RETURNING user_id, id
""")
# The same for several publish requests at once: (user, request) pairs in request order; a
# request naming a user without a stream is refused whole; a user named by several requests
# gets consecutive ids in request order. Run by asyncpg itself (prepared once per connection).
_APPEND_BATCH = """
WITH wanted AS (
    SELECT w.user_id, w.req, w.ord
    FROM unnest(CAST($1 AS INTEGER[]), CAST($2 AS INTEGER[])) WITH ORDINALITY
         AS w(user_id, req, ord)
), refused AS (
    SELECT DISTINCT w.req FROM wanted w LEFT JOIN streams s ON s.user_id = w.user_id
    WHERE s.user_id IS NULL
), accepted AS (
    SELECT * FROM wanted WHERE req NOT IN (SELECT req FROM refused)
), locked AS MATERIALIZED (
    SELECT user_id FROM streams WHERE user_id IN (SELECT user_id FROM accepted)
    ORDER BY user_id FOR UPDATE
), counts AS (
    SELECT user_id, count(*) AS n FROM accepted GROUP BY user_id
), advanced AS (
    UPDATE streams SET last_id = streams.last_id + counts.n,
                       updated_at = CAST($5 AS TIMESTAMPTZ)
    FROM counts, locked
    WHERE streams.user_id = counts.user_id AND streams.user_id = locked.user_id
    RETURNING streams.user_id, streams.last_id - counts.n AS base
), numbered AS (
    SELECT a.user_id, a.req, v.base + row_number() OVER (PARTITION BY a.user_id ORDER BY a.ord) AS id
    FROM accepted a JOIN advanced v ON v.user_id = a.user_id
), inserted AS (
    INSERT INTO events (user_id, id, name, data, created_at)
    SELECT n.user_id, n.id, (CAST($3 AS TEXT[]))[n.req], (CAST($4 AS TEXT[]))[n.req],
           CAST($5 AS TIMESTAMPTZ)
    FROM numbered n
)
SELECT req, user_id, id FROM numbered
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event of one user's stream with its wire form: the channel payload, built once."""

    user_id: int
    id: int
    payload: bytes  # {"id", "name", "data", "created_at"} as JSON
    created_at: float  # unix time, the start of the delivery-latency clock


@dataclass(frozen=True, slots=True)
class StreamHead:
    epoch: str
    last_id: int
    trimmed_id: int


def new_epoch() -> str:
    return secrets.token_hex(8)


def encode_payload(event_id: int, name_json: bytes, data_json: bytes, created_at: str) -> bytes:
    return b'{"id":%d,"name":%s,"data":%s,"created_at":"%s"}' % (
        event_id, name_json, data_json, created_at.encode())


async def create_stream(session: AsyncSession, user_id: int) -> None:
    session.add(Stream(user_id=user_id, epoch=new_epoch(), last_id=0, published_id=0,
                       trimmed_id=0, updated_at=utcnow()))
    await session.flush()


async def append(session: AsyncSession, user_ids: Sequence[int], name: str,
                 data_json: bytes) -> list[StoredEvent]:
    """Append one event named `name` with `data_json` (already-serialized JSON) to each user's
    stream. Unknown users are skipped; the caller checks existence when that matters."""
    if not user_ids:
        return []
    now = utcnow()
    wanted = sorted(set(user_ids))
    data_text = data_json.decode()
    if _postgres(session):
        rows = await session.execute(_APPEND, {"user_ids": wanted, "name": name, "data": data_text,
                                               "created_at": now})
        heads = [(user_id, event_id) for user_id, event_id in rows]
    else:
        heads = await _advance(session, wanted, now)
        await session.execute(
            insert(Event),
            [{"user_id": user_id, "id": event_id, "name": name, "data": data_text, "created_at": now}
             for user_id, event_id in heads],
        )
    return _stored(heads, name, data_json, _Moment(now))


AppendRequest = tuple[Sequence[int], str, bytes]  # user ids, event name, data as JSON


async def append_batch(autocommit: AsyncConnection,
                       requests: Sequence[AppendRequest]) -> list[list[StoredEvent] | None]:
    """PostgreSQL, on a connection in autocommit mode: several (user_ids, name, data_json)
    appends in one self-committing statement, the cheapest durable write there is. Each
    request is all or nothing: None for one naming a user that does not exist.

    The statement goes to asyncpg directly, which keeps it prepared on the connection: through
    SQLAlchemy's `execute` (compilation cache lookup, the cursor adapter, result processing) it
    cost ~400 µs more of the hub's CPU per statement, more than the rest of a one-user call."""
    now = utcnow()
    wanted = [sorted(set(user_ids)) for user_ids, _, _ in requests]
    driver = (await autocommit.get_raw_connection()).driver_connection
    assert driver is not None
    rows = await driver.fetch(
        _APPEND_BATCH,
        [user_id for ids in wanted for user_id in ids],
        [number for number, ids in enumerate(wanted, 1) for _ in ids],
        [name for _, name, _ in requests],
        [data_json.decode() for _, _, data_json in requests],
        now,
    )
    heads: list[list[tuple[int, int]]] = [[] for _ in requests]
    for number, user_id, event_id in rows:
        heads[number - 1].append((user_id, event_id))
    moment = _Moment(now)
    return [_stored(found, name, data_json, moment) if found else None
            for found, (_, name, data_json) in zip(heads, requests, strict=True)]


class _Moment:
    """An append's time as events carry it, formatted once for all of a statement's requests."""

    __slots__ = ("stamp", "text")

    def __init__(self, now: dt.datetime) -> None:
        self.text = rfc3339(now)
        self.stamp = now.timestamp()


def _stored(heads: list[tuple[int, int]], name: str, data_json: bytes,
            moment: _Moment) -> list[StoredEvent]:
    """The events of (user_id, event_id) pairs, in user-id order, with their payloads."""
    name_json = orjson.dumps(name)
    created, stamp = moment.text, moment.stamp
    return [
        StoredEvent(user_id, event_id, encode_payload(event_id, name_json, data_json, created), stamp)
        for user_id, event_id in sorted(heads)
    ]


def _postgres(executor: AsyncSession | AsyncConnection) -> bool:
    bind = executor if isinstance(executor, AsyncConnection) else executor.get_bind()
    return bind.dialect.name == "postgresql"


async def _advance(session: AsyncSession, user_ids: list[int],
                   now: dt.datetime) -> list[tuple[int, int]]:
    """SQLite: increment `last_id` of each existing stream (its single writer needs no row
    locks)."""
    heads: list[tuple[int, int]] = []
    for start in range(0, len(user_ids), LOCK_CHUNK):
        chunk = user_ids[start:start + LOCK_CHUNK]
        rows = await session.execute(
            update(Stream)
            .where(Stream.user_id.in_(chunk))
            .values(last_id=Stream.last_id + 1, updated_at=now)
            .returning(Stream.user_id, Stream.last_id)
            .execution_options(synchronize_session=False)
        )
        heads.extend((user_id, last_id) for user_id, last_id in rows)
    heads.sort()
    return heads


def _locked_streams() -> Any:
    """PostgreSQL: the streams of the `user_ids` array, their rows locked in user-id order."""
    return (select(Stream.user_id).where(Stream.user_id == any_(USER_IDS))
            .order_by(Stream.user_id).with_for_update().subquery("locked"))


def _head_query(user_id: int) -> Select[str, int, int]:
    return select(Stream.epoch, Stream.last_id, Stream.trimmed_id).where(Stream.user_id == user_id)


async def head(session: AsyncSession, user_id: int) -> StreamHead | None:
    found = (await session.execute(_head_query(user_id))).first()
    return StreamHead(*found) if found else None


async def read(session: AsyncSession | AsyncConnection, user_id: int, after: int, limit: int,
               up_to: int | None = None) -> list[StoredEvent]:
    """Up to `limit` events with ids in (`after`, `up_to`], oldest first (in a session, or on a
    bare connection of `Database.readers`, as a socket's gap fill reads them)."""
    condition = and_(Event.user_id == user_id, Event.id > after)
    if up_to is not None:
        condition = and_(condition, Event.id <= up_to)
    rows = await session.execute(
        select(Event.id, Event.name, Event.data, Event.created_at)
        .where(condition).order_by(Event.id).limit(limit)
    )
    return [
        StoredEvent(user_id, event_id,
                    encode_payload(event_id, orjson.dumps(name), data.encode(), rfc3339(created)),
                    created.timestamp())
        for event_id, name, data, created in rows
    ]


async def mark_published(conn: AsyncConnection, newest: Mapping[int, int]) -> None:
    """Raise each stream's `published_id` watermark to the given id (never lowers it): one
    statement on PostgreSQL (give it `Database.single_statement()`), one executemany on
    SQLite; rows locked in user-id order."""
    if not newest:
        return
    ordered = sorted(newest.items())
    if _postgres(conn):
        locked = _locked_streams()
        wanted = (select(func.unnest(USER_IDS).label("user_id"), func.unnest(EVENT_IDS).label("id"))
                  .subquery("wanted"))
        await conn.execute(
            update(Stream)
            .where(Stream.user_id == locked.c.user_id, Stream.user_id == wanted.c.user_id,
                   Stream.published_id < wanted.c.id)
            .values(published_id=wanted.c.id)
            .execution_options(synchronize_session=False),
            {"user_ids": [user_id for user_id, _ in ordered],
             "event_ids": [event_id for _, event_id in ordered]},
        )
        return
    table = cast(Table, Stream.__table__)
    await conn.execute(
        update(table)
        .where(table.c.user_id == bindparam("b_user"), table.c.published_id < bindparam("b_id"))
        .values(published_id=bindparam("b_id")),
        [{"b_user": user_id, "b_id": event_id} for user_id, event_id in ordered],
    )


async def read_unpublished(session: AsyncSession, user_ids: Sequence[int],
                           limit: int) -> list[StoredEvent]:
    """Events past their stream's `published_id`, for the given users, by user then id."""
    rows = await session.execute(
        select(Event.user_id, Event.id, Event.name, Event.data, Event.created_at)
        .join(Stream, Stream.user_id == Event.user_id)
        .where(Event.user_id.in_(list(user_ids)), Event.id > Stream.published_id)
        .order_by(Event.user_id, Event.id).limit(limit)
    )
    return [
        StoredEvent(user_id, event_id,
                    encode_payload(event_id, orjson.dumps(name), data.encode(), rfc3339(created)),
                    created.timestamp())
        for user_id, event_id, name, data, created in rows
    ]


async def unpublished(session: AsyncSession, settled_before: dt.datetime,
                      limit: int = 500) -> list[tuple[int, int, int]]:
    """Streams with events that no process reported published, last written before
    `settled_before`: (user_id, published_id, last_id)."""
    rows = await session.execute(
        select(Stream.user_id, Stream.published_id, Stream.last_id)
        .where(Stream.last_id > Stream.published_id, Stream.updated_at < settled_before)
        .order_by(Stream.updated_at).limit(limit)
    )
    return [(user_id, published, last) for user_id, published, last in rows]


async def trim(session: AsyncSession, keep_events: int, older_than: dt.datetime,
               user_ids: Iterable[int] | None = None, limit: int | None = None) -> tuple[int, int]:
    """Apply retention: drop events beyond the newest `keep_events` of each stream, and events
    created before `older_than`; advances `trimmed_id`. Only streams with something to drop are
    visited: one query finds those over the count or whose oldest kept event (`trimmed_id + 1`)
    is too old, so an idle pass costs one indexed query, not one per stream. Visits at most
    `limit` streams; returns (streams trimmed, events removed)."""
    first_kept = (Event.user_id == Stream.user_id) & (Event.id == Stream.trimmed_id + 1)
    # user-id order, the order `append` locks in: a trimmed stream's row stays locked to the end
    candidates = (
        select(Stream.user_id, Stream.last_id, Stream.trimmed_id)
        .outerjoin(Event, first_kept)
        .where(or_(Stream.last_id - keep_events > Stream.trimmed_id, Event.created_at < older_than))
        .order_by(Stream.user_id).limit(limit)
    )
    if user_ids is not None:
        candidates = candidates.where(Stream.user_id.in_(list(user_ids)))
    trimmed = removed = 0
    for user_id, last_id, trimmed_id in (await session.execute(candidates)).all():
        by_count = last_id - keep_events
        oldest_kept = await session.scalar(
            select(func.min(Event.id)).where(Event.user_id == user_id, Event.id > trimmed_id,
                                             Event.created_at >= older_than)
        )
        by_age = (oldest_kept - 1) if oldest_kept is not None else last_id
        cut = max(by_count, by_age, trimmed_id)
        if cut <= trimmed_id:
            continue
        result = await session.execute(
            delete(Event).where(Event.user_id == user_id, Event.id <= cut)
            .execution_options(synchronize_session=False)
        )
        removed += result.rowcount or 0  # type: ignore[attr-defined]
        trimmed += 1
        await session.execute(
            update(Stream).where(Stream.user_id == user_id).values(trimmed_id=cut)
            .execution_options(synchronize_session=False)
        )
    return trimmed, removed
