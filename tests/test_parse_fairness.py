"""One user cannot starve the shared parser (protocol §7): at most PARSE_MAX_PENDING pending
requests per user (429 with a true Retry-After beyond), and parsers that share their fetch
slots fairly between users, checked with the embedded parser (SQLite) and with
`python -m parser_bridge.worker` as a real process (PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from hub.settings import Settings
from parser_bridge.parse.fair_queue import FairQueue, QueueFull
from tests.conftest import Account, RunningHub, register, serve_hub, unique_name
from tests.page_server import TITLE, PageServer, serve_pages
from tests.parser_worker_process import run_worker
from tests.wsutil import connect

SLOW = 3.0  # seconds each of the greedy user's pages takes


async def _drain(queue: FairQueue[str], count: int) -> list[str]:
    """Take `count` jobs one at a time, finishing each before the next (one slot)."""
    order = []
    for _ in range(count):
        async with asyncio.timeout(1):
            taken = await queue.get()
        assert taken is not None
        user, job = taken
        order.append(job)
        await queue.done(user)
    return order


async def test_fair_queue_goes_round_robin_over_users() -> None:
    queue: FairQueue[str] = FairQueue(slots=1, per_user=1, max_waiting=100)
    for n in range(4):
        await queue.put(1, f"a{n}")
    await queue.put(2, "b0")
    await queue.put(2, "b1")
    await queue.put(3, "c0")
    assert await _drain(queue, 7) == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    many: FairQueue[str] = FairQueue(slots=8, per_user=4, max_waiting=100)
    for n in range(6):
        await many.put(1, f"a{n}")
    await many.put(2, "b0")
    taken = [await many.get() for _ in range(5)]
    assert [job for _, job in filter(None, taken)] == ["a0", "b0", "a1", "a2", "a3"]
    await many.put(3, "c0")
    await many.put(2, "b1")
    async with asyncio.timeout(1):  # the users with fewest in flight first: 3 (none), then 2
        assert [await many.get() for _ in range(2)] == [(3, "c0"), (2, "b1")]


async def test_fair_queue_caps_a_users_jobs_in_flight_and_wants_the_next_users() -> None:
    queue: FairQueue[str] = FairQueue(slots=4, per_user=2, max_waiting=5)
    for n in range(5):
        await queue.put(1, f"a{n}")
    with pytest.raises(QueueFull):
        await queue.put(2, "too many")
    taken = [await queue.get() for _ in range(2)]
    assert [job for _, job in filter(None, taken)] == ["a0", "a1"]
    # user 1 is at the cap with two slots idle: the taker should look for other users' jobs
    assert queue.runnable() == 0
    assert queue.wants_more()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await queue.get()
    await queue.put(2, "b0")
    await queue.put(2, "b1")
    assert not queue.wants_more()  # both idle slots have a runnable job (and the queue is full)
    async with asyncio.timeout(1):
        assert await queue.get() == (2, "b0")  # at once, though user 1 came first
    user, _ = taken[0] or ("", "")
    await queue.done(user)
    async with asyncio.timeout(1):
        assert await queue.get() == (1, "a2")  # one in flight each: user 1's turn is older
        assert await queue.get() == (2, "b1")
    queue2: FairQueue[str] = FairQueue(slots=4, per_user=2, max_waiting=100)
    for n in range(3):
        await queue2.put(1, f"a{n}")
    await queue2.get()
    await queue2.get()
    assert queue2.wants_more()  # two idle slots and only a capped user's job waiting
    await queue2.put(None, "legacy")  # a job without a user is a user of its own
    await queue2.put(None, "legacy2")
    assert not queue2.wants_more()  # two idle slots, two runnable jobs
    await queue2.close()
    assert await queue2.get() is None


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with serve_pages() as server:
        yield server


@pytest.fixture
def fair_settings(settings: Settings) -> Settings:
    return replace(settings, redis_channel_prefix=f"{unique_name('pf')}:", parser_allow_private=True)


async def _submit(hub: RunningHub, who: Account, url: str) -> int:
    answer = await hub.http.post("/api/v1/parse", json={"url": url}, headers=who.headers)
    assert answer.status_code == 202, answer.text
    return int(answer.json()["request_id"])


async def test_pending_requests_per_user_are_capped_with_a_true_retry_after(
        fair_settings: Settings, pages: PageServer) -> None:
    settings = replace(fair_settings, parse_max_pending=3, parse_timeout=4)
    async with serve_hub(settings) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        for _ in range(3):  # nobody answers these: the embedded parser hangs, no worker runs
            await _submit(hub, alice, pages.url("/hang"))
        refused = await hub.http.post("/api/v1/parse", json={"url": pages.url("/page")},
                                      headers=alice.headers)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "rate_limited"
        assert "PARSE_MAX_PENDING" in refused.json()["detail"]
        refused_at = time.monotonic()
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 4
        await _submit(hub, bob, pages.url("/hang"))  # another user is not affected
        # the promise holds: after Retry-After the oldest has timed out and there is room again
        await asyncio.sleep(max(0.0, refused_at + retry_after - time.monotonic()))
        await _submit(hub, alice, pages.url("/hang"))


@contextlib.asynccontextmanager
async def _parser(hub: RunningHub) -> AsyncIterator[None]:
    """The parser of the backend: a worker process with Redis, else the hub's embedded one."""
    if hub.settings.redis_url is None:
        yield
        return
    async with run_worker(hub, PARSER_ALLOW_PRIVATE="1", PARSER_FETCH_TIMEOUT="10") as worker:
        yield
        assert await worker.stop() == 0


async def test_one_users_slow_pages_do_not_delay_another_users_page(
        fair_settings: Settings, pages: PageServer) -> None:
    async with serve_hub(fair_settings) as hub, _parser(hub):
        greedy, other = await register(hub.http), await register(hub.http)
        other_socket = await connect(hub.ws_url, other.access_token)
        greedy_socket = await connect(hub.ws_url, greedy.access_token)
        slow = [await _submit(hub, greedy, pages.url(f"/slow?delay={SLOW}&n={n}")) for n in range(10)]
        async with asyncio.timeout(10):
            while pages.hits["slow"] < 2:  # the parser is busy with the greedy user's pages
                await asyncio.sleep(0.02)
        asked = time.monotonic()
        fast = await _submit(hub, other, pages.url("/page"))
        (frame,) = await other_socket.events(1, timeout=10)
        waited = time.monotonic() - asked
        assert frame["data"]["request_id"] == fast
        assert (frame["data"]["status"], frame["data"]["title"]) == ("success", TITLE)
        assert waited < SLOW / 2, f"the other user's page waited {waited:.1f}s behind the slow ones"
        frames = await greedy_socket.events(10, timeout=60)
        results: dict[int, Any] = {f["data"]["request_id"]: f["data"] for f in frames}
        assert sorted(results) == slow
        assert {r["status"] for r in results.values()} == {"success"}, results  # none timed out
        await other_socket.close()
        await greedy_socket.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_the_worker_still_serves_jobs_without_a_user(fair_settings: Settings,
                                                          pages: PageServer) -> None:
    """Seed 001's job shape, as an older hub pushes it: `{"id", "url"}` and nothing else."""
    async with serve_hub(fair_settings) as hub, _parser(hub):
        prefix = hub.settings.redis_channel_prefix
        redis = aioredis.from_url(str(hub.settings.redis_url))
        try:
            job = orjson.dumps({"id": 987654, "url": pages.url("/page")})
            await redis.lpush(f"{prefix}parser:tasks", job)
            async with asyncio.timeout(15):
                while (raw := await redis.get(f"{prefix}parser:results:987654")) is None:
                    await asyncio.sleep(0.05)
        finally:
            await redis.aclose()
        assert orjson.loads(raw)["title"] == TITLE
