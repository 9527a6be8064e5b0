"""`python -m parser_bridge.worker` as a real process, with the hub on PostgreSQL + Redis and
pages served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from hub.settings import Settings
from tests.conftest import Account, RunningHub, register, serve_hub, unique_name
from tests.page_server import PAGE, TITLE, PageServer, serve_pages
from tests.parser_worker_process import run_worker
from tests.wsutil import connect

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with serve_pages() as server:
        yield server


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[RunningHub]:
    async with serve_hub(replace(settings, redis_channel_prefix=f"{unique_name('pw')}:")) as running:
        yield running


async def submit(hub: RunningHub, account: Account, url: str) -> int:
    answer = await hub.http.post("/api/v1/parse", json={"url": url}, headers=account.headers)
    assert answer.status_code == 202, answer.text
    return int(answer.json()["request_id"])


async def final(hub: RunningHub, account: Account, request_id: int, timeout: float = 15) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            got = (await hub.http.get(f"/api/v1/parse/{request_id}", headers=account.headers)).json()
            if got["status"] != "pending":
                return dict(got)
            await asyncio.sleep(0.05)


async def wait_for(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_worker_fetches_pages_end_to_end_several_at_once(hub: RunningHub, pages: PageServer) -> None:
    alice = await register(hub.http)
    socket = await connect(hub.ws_url, alice.access_token)
    async with run_worker(hub, PARSER_ALLOW_PRIVATE="1", PARSER_CONCURRENCY="4") as worker:
        request_id = await submit(hub, alice, pages.url("/page"))
        (frame,) = await socket.events(1, timeout=15)
        assert frame["name"] == "parse.completed"
        assert frame["data"] == {"request_id": request_id, "url": pages.url("/page"),
                                 "status": "success", "title": TITLE, "error": None}
        page = await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)
        assert page.text == PAGE

        pages.hang_first = 4
        hanging = [await submit(hub, alice, pages.url(f"/hang?n={n}")) for n in range(4)]
        await wait_for(lambda: pages.hits["hang"] == 4)  # four fetches in flight at once
        pages.release.set()
        frames = await socket.events(4, timeout=15)
        assert sorted(f["data"]["request_id"] for f in frames) == hanging
        assert {f["data"]["title"] for f in frames} == {TITLE}
        assert await worker.stop() == 0
    await socket.close()


async def test_worker_refuses_private_targets_without_the_override(
        hub: RunningHub, pages: PageServer) -> None:
    alice = await register(hub.http)
    port = pages.base_url.rsplit(":", 1)[1]
    async with run_worker(hub, PARSER_ALLOW_NETWORKS="127.0.0.1/32") as worker:
        allowed = await submit(hub, alice, pages.url("/page"))
        assert (await final(hub, alice, allowed))["title"] == TITLE
        mapped = await hub.http.post("/api/v1/parse", json={"url": f"http://[::ffff:192.168.0.1]:{port}/"},
                                     headers=alice.headers)
        assert mapped.status_code == 422, mapped.text  # IPv4 inside IPv6 is refused at the door
        urls = [f"http://127.0.0.2:{port}/page", f"http://[::1]:{port}/page", "http://10.0.0.1/",
                pages.url(f"/redirect?to=http://127.0.0.2:{port}/page"),
                pages.url("/redirect?to=http://192.168.1.1/admin")]
        for url in urls:
            request_id = await submit(hub, alice, url)
            result = await final(hub, alice, request_id)
            assert result["status"] == "failure", url
            assert "refused" in result["error"], (url, result)
        assert await worker.stop() == 0
    async with run_worker(hub) as worker:  # no override at all: loopback itself is refused
        request_id = await submit(hub, alice, pages.url("/page"))
        result = await final(hub, alice, request_id)
        assert result["status"] == "failure"
        assert "refused" in result["error"]
        assert await worker.stop() == 0
    assert pages.hits["page"] == 1  # only the allowed fetch reached the server


async def test_a_job_of_a_killed_worker_is_done_by_the_next(hub: RunningHub, pages: PageServer) -> None:
    alice = await register(hub.http)
    pages.hang_first = 1
    async with run_worker(hub, PARSER_ALLOW_PRIVATE="1") as first:
        request_id = await submit(hub, alice, pages.url("/hang"))
        await wait_for(lambda: pages.hits["hang"] == 1)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    started = time.monotonic()
    async with run_worker(hub, PARSER_ALLOW_PRIVATE="1") as second:
        result = await final(hub, alice, request_id, timeout=20)
        assert result["status"] == "success"
        assert result["title"] == TITLE
        assert time.monotonic() - started < 10  # heartbeat TTL 2 s, reaper every second
        assert await second.stop() == 0
        assert "requeued 1 jobs" in await second.output()
    assert pages.hits["hang"] == 2


async def test_sigterm_finishes_the_fetch_in_flight(hub: RunningHub, pages: PageServer) -> None:
    alice = await register(hub.http)
    pages.hang_first = 1
    async with run_worker(hub, PARSER_ALLOW_PRIVATE="1") as worker:
        request_id = await submit(hub, alice, pages.url("/hang"))
        await wait_for(lambda: pages.hits["hang"] == 1)
        worker.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert worker.process.returncode is None  # still finishing its fetch
        pages.release.set()
        assert await worker.stop() == 0
    result = await final(hub, alice, request_id)
    assert result["status"] == "success"
    redis = aioredis.from_url(str(hub.settings.redis_url))
    try:
        prefix = hub.settings.redis_channel_prefix
        assert [key async for key in redis.scan_iter(match=f"{prefix}parser:processing:*")] == []
        assert [key async for key in redis.scan_iter(match=f"{prefix}parser:worker:*")] == []
    finally:
        await redis.aclose()


async def test_worker_refuses_a_bad_configuration(hub: RunningHub) -> None:
    async with run_worker(hub, REDIS_URL="") as worker:
        assert await worker.exited() == 2
        assert "REDIS_URL" in await worker.output()
    async with run_worker(hub, PARSER_ALLOW_NETWORKS="10.0.0.0/8,nonsense") as worker:
        assert await worker.exited() == 2
        assert "PARSER_ALLOW_NETWORKS" in await worker.output()
