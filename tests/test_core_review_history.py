"""Review of `GET /api/v1/events` (§9) under concurrent publishes on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RunningHub
from tests.wsutil import make_users, publish_to


@pytest.fixture
def backend() -> str:
    return "postgres"  # READ COMMITTED: each statement of a session sees its own snapshot


async def test_history_never_lists_an_event_past_its_last_event_id(hub: RunningHub) -> None:
    """A page is one consistent view: the head and the items read together, so a client that
    pages to the end and resumes from `last_event_id` neither repeats nor skips an event."""
    ((user_id, token), (other_id, _)) = await make_users(hub.settings, 2)
    auth = {"Authorization": f"Bearer {token}"}
    stop = asyncio.Event()

    async def pump() -> None:
        while not stop.is_set():
            await publish_to(hub, [user_id, other_id])

    pumps = [asyncio.create_task(pump()) for _ in range(6)]
    beyond: list[tuple[int, int]] = []
    try:
        async with asyncio.timeout(60):
            after = 0
            for _ in range(300):
                page = (await hub.http.get(f"/api/v1/events?after={after}", headers=auth)).json()
                if page["items"] and page["items"][-1]["id"] > page["last_event_id"]:
                    beyond.append((page["items"][-1]["id"], page["last_event_id"]))
                after = max(0, page["last_event_id"] - 2)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*pumps)
    assert beyond == [], f"(newest item, last_event_id) pairs: {beyond[:5]}"
