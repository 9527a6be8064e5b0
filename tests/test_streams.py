"""The event store's writes on both databases: appends and the published watermark."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from hub import streams
from hub.db import Database
from hub.models import Stream
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
async def test_the_self_committing_append_writes_all_or_nothing(db: Database) -> None:
    first, second = await _users(db, 2)
    async with db.single_statement() as conn:
        assert await streams.append_all_or_none(conn, [first, 2**31 - 7, second], "x", b"{}") is None
        written = await streams.append_all_or_none(conn, [second, first], "y", b'{"v":2}')
    assert written is not None
    assert [(e.user_id, e.id) for e in written] == [(first, 1), (second, 1)]
    async with db.sessions() as session:  # committed, though the connection never began anything
        assert [e.payload for e in await streams.read(session, second, 0, 10)] == [written[1].payload]
    assert await _watermarks(db, [first, second]) == {first: (1, 0), second: (1, 0)}
