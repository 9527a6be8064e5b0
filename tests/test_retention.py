"""Stream retention: by count and by age, advancing `trimmed_id`, on both databases; on PostgreSQL,
retention and publishers take stream rows in one order."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from sqlalchemy import update

from hub import streams
from hub.db import Database
from hub.metrics import Metrics
from hub.models import Event
from hub.retention import Retention
from hub.settings import Settings
from hub.users import create_user
from tests.conftest import RunningHub, unique_name
from tests.wsutil import make_users, publish_to

KEY = {"Authorization": "Bearer test-hub-api-key"}


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


@pytest.mark.parametrize("backend", ["postgres"])
async def test_retention_and_a_publish_to_the_same_users_do_not_deadlock(hub: RunningHub,
                                                                         settings: Settings) -> None:
    """Retention visits the streams it trims in user-id order, the order in which publishers lock
    stream rows, and holds each trimmed stream's row until its transaction ends. In physical
    order, a stream stored before a lower user's (any update moves a row) made the two wait on
    each other: PostgreSQL broke the deadlock by failing one, the publish API answering 500. The
    interleaving is pinned with a lock on one of the events retention deletes."""
    (low, _), (high, _) = await make_users(settings, 2)
    for _ in range(12):
        await publish_to(hub, [low, high])
    await publish_to(hub, [low])  # the low stream's row is rewritten after the high one's
    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    pin = await asyncpg.connect(dsn)
    watch = await asyncpg.connect(dsn)
    db = Database(settings.database_url)
    db.open()
    try:
        order = [r["user_id"] for r in await watch.fetch("SELECT user_id FROM streams")]
        assert order.index(high) < order.index(low), "precondition: high stored before low"
        async with pin.transaction():
            await pin.execute("SELECT 1 FROM events WHERE user_id = $1 AND id = 1 FOR UPDATE", low)
            retention = asyncio.create_task(Retention(db, Metrics(), 5, 3600).step())

            async def waiting(query: str) -> bool:
                return bool(await watch.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE $1", query))

            assert await _until(lambda: waiting("DELETE FROM events%"), 10)
            publish = asyncio.create_task(hub.http.post(
                "/api/v1/publish", json={"user_ids": [low, high], "name": "x"}, headers=KEY))
            await _until(lambda: waiting("SELECT streams.user_id%FOR UPDATE"), 3)
        async with asyncio.timeout(20):
            response = await publish
            await retention
        assert response.status_code == 202, response.text
    finally:
        await db.close()
        await pin.close()
        await watch.close()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        return False
    return True
