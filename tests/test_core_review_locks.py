"""Review of lock order on PostgreSQL: retention and publishers take stream rows in one order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from hub.db import Database
from hub.metrics import Metrics
from hub.retention import Retention
from hub.settings import Settings
from tests.conftest import RunningHub
from tests.wsutil import make_users, publish_to

KEY = {"Authorization": "Bearer test-hub-api-key"}


@pytest.fixture
def backend() -> str:
    return "postgres"


async def _until(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        return False
    return True


async def test_retention_and_a_publish_to_the_same_users_do_not_deadlock(hub: RunningHub,
                                                                         settings: Settings) -> None:
    """Retention used to walk the streams in physical order, holding each trimmed stream's row
    until its one transaction ended, while publishers lock stream rows in user-id order. A
    stream stored before a lower user's (any update moves a row) made the two wait on each
    other: PostgreSQL broke the deadlock by failing one, the publish API answering 500. The
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
