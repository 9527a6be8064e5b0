"""The event store's writes on both databases: appends and the published watermark."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import delete, func, select, text, update

from hub import streams
from hub.db import Database
from hub.events import Event, EventBus
from hub.models import Event as EventRow
from hub.models import Stream, User
from hub.streams import StoredEvent
from hub.users import create_user
from tests.conftest import unique_name


async def _users(db: Database, count: int) -> list[int]:
    async with db.sessions.begin() as session:
        return [(await create_user(session, unique_name("s"))).id for _ in range(count)]


async def _watermarks(db: Database, user_ids: list[int]) -> dict[int, tuple[int, int]]:
    async with db.sessions() as session:
        rows = await session.execute(select(Stream.user_id, Stream.last_id, Stream.published_id)
                                     .where(Stream.user_id.in_(user_ids)))
        return {user_id: (last, published) for user_id, last, published in rows}


async def test_append_numbers_each_stream_on_its_own_and_skips_unknown_users(db: Database) -> None:
    first, second = await _users(db, 2)
    async with db.sessions.begin() as session:
        await streams.append(session, [first], "a", b"{}")
        written = await streams.append(session, [second, 2**31 - 7, first, second], "b", b'{"k":1}')
    assert [(e.user_id, e.id) for e in written] == [(first, 2), (second, 1)]
    async with db.sessions() as session:
        stored = await streams.read(session, first, 0, 10)
    assert [e.id for e in stored] == [1, 2]
    assert stored[1].payload == written[0].payload  # read back as it was published
    assert stored[1].payload.startswith(b'{"id":2,"name":"b","data":{"k":1},"created_at":"')


async def test_deleting_a_user_deletes_their_stream_and_its_events(db: Database) -> None:
    """On SQLite by the foreign keys' cascade; on PostgreSQL events have no foreign key (its
    check cost half of an append) and a trigger on streams does it (migration 0005)."""
    gone, kept = await _users(db, 2)
    async with db.sessions.begin() as session:
        for _ in range(3):
            await streams.append(session, [gone, kept], "e", b"{}")
    async with db.sessions.begin() as session:
        await session.execute(delete(User).where(User.id == gone))
    async with db.sessions() as session:
        left = (await session.execute(select(EventRow.user_id, func.count()).where(
            EventRow.user_id.in_([gone, kept])).group_by(EventRow.user_id))).all()
    assert [tuple(row) for row in left] == [(kept, 3)]
    assert await _watermarks(db, [gone, kept]) == {kept: (3, 0)}


async def test_mark_published_raises_watermarks_and_never_lowers_them(db: Database) -> None:
    ahead, behind, untouched = users = await _users(db, 3)
    async with db.sessions.begin() as session:
        for _ in range(5):
            await streams.append(session, users, "e", b"{}")
        await session.execute(update(Stream).where(Stream.user_id == behind).values(published_id=4))
    async with db.sessions.begin() as session:
        await streams.mark_published(session, {behind: 2, ahead: 3})
    async with db.sessions.begin() as session:
        await streams.mark_published(session, {ahead: 5})
    assert await _watermarks(db, users) == {ahead: (5, 5), behind: (5, 4), untouched: (5, 0)}


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_batch_of_appends_is_one_statement_and_each_request_all_or_nothing(db: Database) -> None:
    first, second, third = await _users(db, 3)
    requests: list[tuple[list[int], str, bytes]] = [
        ([second, first], "a", b'{"n":1}'),
        ([third, 2**31 - 7], "refused", b"{}"),  # a user that does not exist
        ([second], "b", b'{"n":2}'),
        ([first, third], "c", b"{}"),
    ]
    async with db.single_statement() as conn:
        results = await streams.append_batch(conn, requests)
    got = [None if r is None else [(e.user_id, e.id) for e in r] for r in results]
    assert got == [[(first, 1), (second, 1)], None, [(second, 2)], [(first, 2), (third, 1)]]
    async with db.sessions() as session:  # committed, though the connection never began anything
        stored = await streams.read(session, second, 0, 10)
    assert [e.payload for e in stored] == [results[0][1].payload, results[2][0].payload]  # type: ignore[index]
    assert b'"name":"b","data":{"n":2}' in stored[1].payload
    assert await _watermarks(db, [first, second, third]) == {first: (2, 0), second: (2, 0), third: (1, 0)}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_concurrent_publishes_are_numbered_in_call_order_and_published_after_commit(
        db: Database) -> None:
    first, second = await _users(db, 2)
    published: list[list[tuple[int, int]]] = []

    async def after_commit(events: Sequence[StoredEvent]) -> None:
        published.append([(e.user_id, e.id) for e in events])

    bus = EventBus(db, after_commit)
    calls = [([first, second], b"1"), ([second], b"2"), ([first, 2**31 - 7], b"x"), ([first], b"3")]
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(bus.publish(ids, Event.published("e", b'{"n":%s}' % n))
                                         for ids, n in calls))
        await bus.close()  # the writer's connection goes back before the database closes
    got = [None if r is None else [(e.user_id, e.id) for e in r] for r in results]
    assert got == [[(first, 1), (second, 1)], [(second, 2)], None, [(first, 2)]]
    assert sorted(published) == sorted(g for g in got if g is not None)
    assert await _watermarks(db, [first, second]) == {first: (2, 0), second: (2, 0)}


@pytest.mark.parametrize("backend", ["postgres"])
async def test_statements_are_planned_for_their_own_arrays(db: Database) -> None:
    """A generic plan made for small arrays of user ids took seconds for 10,000 (bench/README)."""
    for connect in (db.single_statement, db.readers.connect):
        async with connect() as conn:
            assert (await conn.execute(text("SHOW plan_cache_mode"))).scalar() == "force_custom_plan"
