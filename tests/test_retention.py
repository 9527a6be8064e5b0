"""Stream retention: by count and by age, advancing `trimmed_id`, on both databases."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from hub import streams
from hub.db import Database
from hub.metrics import Metrics
from hub.models import Event
from hub.retention import Retention
from hub.users import create_user
from tests.conftest import unique_name


async def _user_with_events(db: Database, count: int) -> int:
    async with db.sessions.begin() as session:
        user = await create_user(session, unique_name("r"))
        for n in range(count):
            await streams.append(session, [user.id], "r", b'{"n":%d}' % n)
    return user.id


async def test_retention_keeps_the_newest_events_by_count(db: Database) -> None:
    user_id = await _user_with_events(db, 20)
    await Retention(db, Metrics(), keep_events=5, keep_seconds=3600).step()
    async with db.sessions() as session:
        head = await streams.head(session, user_id)
        left = await streams.read(session, user_id, 0, 100)
    assert head is not None
    assert head.trimmed_id == 15
    assert head.last_id == 20
    assert [e.id for e in left] == [16, 17, 18, 19, 20]


async def test_retention_drops_events_older_than_the_age_limit(db: Database) -> None:
    user_id = await _user_with_events(db, 10)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    async with db.sessions.begin() as session:
        await session.execute(
            update(Event).where(Event.user_id == user_id, Event.id <= 6).values(created_at=old))
    await Retention(db, Metrics(), keep_events=10_000, keep_seconds=7 * 24 * 3600).step()
    async with db.sessions() as session:
        head = await streams.head(session, user_id)
        left = await streams.read(session, user_id, 0, 100)
    assert head is not None
    assert head.trimmed_id == 6
    assert [e.id for e in left] == [7, 8, 9, 10]
    async with db.sessions.begin() as session:
        events = await streams.append(session, [user_id], "after", b"{}")
    assert events[0].id == 11


async def test_one_step_trims_every_stream_in_batches_and_skips_the_rest(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hub.retention.TRIM_BATCH", 2)  # five streams to trim: three transactions
    over = [await _user_with_events(db, 6) for _ in range(5)]
    under = await _user_with_events(db, 3)
    await Retention(db, Metrics(), keep_events=4, keep_seconds=3600).step()
    async with db.sessions() as session:
        for user_id in over:
            head = await streams.head(session, user_id)
            assert head is not None and head.trimmed_id == 2
        head = await streams.head(session, under)
        assert head is not None and head.trimmed_id == 0
    async with db.sessions.begin() as session:
        again = await streams.trim(session, 4, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
                                   user_ids=[*over, under])
    assert again == (0, 0)  # nothing left to trim: no stream is visited
