"""Parse requests (protocol §7) on both backends: SQLite with the embedded parser, PostgreSQL
with the Redis queue. Results arrive by REST or by the parser's Redis key; the first wins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from hub.settings import Settings
from tests.conftest import RunningHub, register, serve_hub, unique_name
from tests.page_server import PAGE, TITLE, PageServer, serve_pages
from tests.wsutil import connect

PARSER = {"Authorization": "Bearer test-parser-token"}
SUCCESS = {"status": "success", "title": "Example", "html": "<html><title>Example</title><script>x</script>"}


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with serve_pages() as server:
        yield server


@pytest.fixture
def parse_settings(settings: Settings) -> Settings:
    """Own Redis key prefix per test (no job of another test is seen); the embedded parser of
    the SQLite backend may reach the page server on 127.0.0.1."""
    return replace(settings, redis_channel_prefix=f"{unique_name('pt')}:", parser_allow_private=True)


@pytest.fixture
async def parse_hub(parse_settings: Settings) -> AsyncIterator[RunningHub]:
    async with serve_hub(parse_settings) as running:
        yield running


async def submit(hub: RunningHub, headers: dict[str, str], url: str) -> int:
    answer = await hub.http.post("/api/v1/parse", json={"url": url}, headers=headers)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "pending"
    return int(body["request_id"])


async def wait_final(hub: RunningHub, headers: dict[str, str], request_id: int,
                     timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            got = await hub.http.get(f"/api/v1/parse/{request_id}", headers=headers)
            assert got.status_code == 200, got.text
            if got.json()["status"] != "pending":
                return dict(got.json())
            await asyncio.sleep(0.05)


async def test_rest_result_completes_once_and_reaches_the_socket(
        parse_hub: RunningHub, pages: PageServer) -> None:
    hub = parse_hub
    alice = await register(hub.http)
    socket = await connect(hub.ws_url, alice.access_token)
    url = pages.url("/hang")  # the embedded parser (SQLite backend) waits there forever
    request_id = await submit(hub, alice.headers, url)
    pending = await hub.http.get(f"/api/v1/parse/{request_id}", headers=alice.headers)
    assert pending.json()["status"] == "pending"
    assert (await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)).status_code == 404

    put = await hub.http.put(f"/api/v1/parse/{request_id}/result", json=SUCCESS, headers=PARSER)
    assert put.status_code == 200, put.text
    (frame,) = await socket.events(1)
    assert frame["name"] == "parse.completed"
    assert frame["data"] == {"request_id": request_id, "url": url, "status": "success",
                             "title": "Example", "error": None}
    shown = await hub.http.get(f"/api/v1/parse/{request_id}", headers=alice.headers)
    assert shown.json()["status"] == "success"
    assert shown.json()["title"] == "Example"
    assert shown.json()["url"] == url
    assert shown.json()["created_at"].endswith("Z")

    page = await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)
    assert page.status_code == 200
    assert page.text == SUCCESS["html"]
    assert page.headers["content-type"] == "text/plain; charset=utf-8"
    assert page.headers["content-disposition"].startswith("attachment;")
    assert page.headers["x-content-type-options"] == "nosniff"

    again = await hub.http.put(f"/api/v1/parse/{request_id}/result",
                               json={"status": "failure", "error": "late"}, headers=PARSER)
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"
    await socket.silent(0.3)
    await socket.close()


async def test_result_call_checks_token_and_request(parse_hub: RunningHub, pages: PageServer) -> None:
    hub = parse_hub
    alice = await register(hub.http)
    request_id = await submit(hub, alice.headers, pages.url("/hang"))
    path = f"/api/v1/parse/{request_id}/result"
    for headers in ({}, {"Authorization": "Bearer wrong"}, alice.headers):
        denied = await hub.http.put(path, json=SUCCESS, headers=headers)
        assert denied.status_code == 403, denied.text
        assert denied.json()["error"] == "forbidden"
    for unknown in (request_id + 10_000, 2**40):
        missing = await hub.http.put(f"/api/v1/parse/{unknown}/result", json=SUCCESS, headers=PARSER)
        assert missing.status_code == 404
    for bad in ({"status": "success"}, {"status": "failure"}, {"status": "done", "error": "x"}):
        invalid = await hub.http.put(path, json=bad, headers=PARSER)
        assert invalid.status_code == 422, invalid.text
    not_json = await hub.http.put(path, content=b"{", headers={**PARSER, "Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert (await wait_status(hub, alice.headers, request_id)) == "pending"
    failed = await hub.http.put(path, json={"status": "failure", "error": "DNS failed"}, headers=PARSER)
    assert failed.status_code == 200
    body = failed.json()
    assert (body["status"], body["title"], body["error"]) == ("failure", None, "DNS failed")
    assert (await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)).status_code == 404


async def wait_status(hub: RunningHub, headers: dict[str, str], request_id: int) -> str:
    got = await hub.http.get(f"/api/v1/parse/{request_id}", headers=headers)
    return str(got.json()["status"])


async def test_only_the_owner_sees_a_request(parse_hub: RunningHub, pages: PageServer) -> None:
    hub = parse_hub
    alice, bob = await register(hub.http), await register(hub.http)
    request_id = await submit(hub, alice.headers, pages.url("/hang"))
    assert (await hub.http.put(f"/api/v1/parse/{request_id}/result", json=SUCCESS,
                               headers=PARSER)).status_code == 200
    for path in (f"/api/v1/parse/{request_id}", f"/api/v1/parse/{request_id}/html"):
        assert (await hub.http.get(path, headers=alice.headers)).status_code == 200
        theirs = await hub.http.get(path, headers=bob.headers)
        assert theirs.status_code == 404
        assert theirs.json()["error"] == "not_found"
        assert (await hub.http.get(path)).status_code == 401
    for missing in (request_id + 10_000, 2**63):
        assert (await hub.http.get(f"/api/v1/parse/{missing}", headers=alice.headers)).status_code == 404


async def test_submit_validates_the_url(parse_hub: RunningHub) -> None:
    hub = parse_hub
    alice = await register(hub.http)
    for url in ("ftp://example.com/", "javascript:alert(1)", "http://", "example.com",
                "http://example.com/" + "a" * 2048, "http://exa mple.com/", "http://h:99999/"):
        answer = await hub.http.post("/api/v1/parse", json={"url": url}, headers=alice.headers)
        assert answer.status_code == 422, (url, answer.text)
        assert "url" in answer.json()["fields"]
    assert (await hub.http.post("/api/v1/parse", json={"url": "http://example.com/"})).status_code == 401
    wrong_type = await hub.http.post("/api/v1/parse", content=b"url=x",
                                     headers={**alice.headers, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415


async def test_requests_time_out_even_across_a_restart(parse_settings: Settings, pages: PageServer) -> None:
    settings = replace(parse_settings, parse_timeout=1.5)
    async with serve_hub(settings) as hub:
        alice = await register(hub.http)
        request_id = await submit(hub, alice.headers, pages.url("/hang"))
    await asyncio.sleep(1.6)  # overdue while no hub runs
    async with serve_hub(settings) as hub:
        final = await wait_final(hub, alice.headers, request_id, timeout=5)
        assert (final["status"], final["error"], final["title"]) == ("failure", "timeout", None)
        history = (await hub.http.get("/api/v1/events", headers=alice.headers)).json()["items"]
        assert [(e["name"], e["data"]["request_id"], e["data"]["error"]) for e in history] == [
            ("parse.completed", request_id, "timeout")]
        socket = await connect(hub.ws_url, alice.access_token)
        late = await hub.http.put(f"/api/v1/parse/{request_id}/result", json=SUCCESS, headers=PARSER)
        assert late.status_code == 409
        fresh = await submit(hub, alice.headers, pages.url("/hang"))
        started = time.monotonic()
        final = await wait_final(hub, alice.headers, fresh, timeout=5)
        assert final["error"] == "timeout"
        assert 1.4 < time.monotonic() - started < 4.0
        (frame,) = await socket.events(1)
        assert frame["data"] == {"request_id": fresh, "url": pages.url("/hang"), "status": "failure",
                                 "title": None, "error": "timeout"}
        await socket.close()


async def test_parse_calls_are_in_the_openapi_document(parse_hub: RunningHub) -> None:
    paths = (await parse_hub.http.get("/api/openapi.json")).json()["paths"]
    assert "post" in paths["/api/v1/parse"]
    assert "get" in paths["/api/v1/parse/{request_id}"]
    assert "get" in paths["/api/v1/parse/{request_id}/html"]
    assert "put" in paths["/api/v1/parse/{request_id}/result"]


# --- the Redis path (PostgreSQL backend) -------------------------------------------------

@pytest.fixture
async def redis_hub(parse_settings: Settings) -> AsyncIterator[tuple[RunningHub, aioredis.Redis]]:
    if parse_settings.redis_url is None:
        pytest.skip("the Redis path needs the PostgreSQL + Redis backend")
    client = aioredis.from_url(parse_settings.redis_url)
    try:
        async with serve_hub(parse_settings) as running:
            yield running, client
    finally:
        await client.aclose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_redis_key_result_is_picked_up_and_delivered_live(
        redis_hub: tuple[RunningHub, aioredis.Redis]) -> None:
    hub, redis = redis_hub
    prefix = hub.settings.redis_channel_prefix
    alice = await register(hub.http)
    socket = await connect(hub.ws_url, alice.access_token)
    request_id = await submit(hub, alice.headers, "https://example.com/a?b=1")
    async with asyncio.timeout(5):
        job = orjson.loads(await redis.rpop(f"{prefix}parser:tasks"))
    assert job == {"id": request_id, "url": "https://example.com/a?b=1", "user_id": alice.id}

    # nothing but the results loop reads the key (every RESULTS_INTERVAL, well within the
    # promised second); the time it takes is the bench's business, not an assertion here
    await redis.set(f"{prefix}parser:results:{request_id}", orjson.dumps(SUCCESS), ex=60)
    (frame,) = await socket.events(1, timeout=5)
    assert frame["data"]["status"] == "success"
    assert frame["data"]["title"] == "Example"
    async with asyncio.timeout(5):
        while await redis.exists(f"{prefix}parser:results:{request_id}"):
            await asyncio.sleep(0.05)
    late = await hub.http.put(f"/api/v1/parse/{request_id}/result", json=SUCCESS, headers=PARSER)
    assert late.status_code == 409
    page = await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)
    assert page.text == SUCCESS["html"]
    await socket.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_racing_results_make_one_winner_and_one_event(
        redis_hub: tuple[RunningHub, aioredis.Redis]) -> None:
    hub, redis = redis_hub
    prefix = hub.settings.redis_channel_prefix
    alice = await register(hub.http)
    socket = await connect(hub.ws_url, alice.access_token)
    request_ids = [await submit(hub, alice.headers, f"https://example.com/{n}") for n in range(5)]
    for request_id in request_ids:
        await redis.set(f"{prefix}parser:results:{request_id}",
                        orjson.dumps({"status": "failure", "error": "from redis"}), ex=60)
    attempts = [request_id for request_id in request_ids for _ in range(3)]
    puts = await asyncio.gather(*(
        hub.http.put(f"/api/v1/parse/{request_id}/result", json=SUCCESS, headers=PARSER)
        for request_id in attempts))
    assert {put.status_code for put in puts} <= {200, 409}
    frames = await socket.events(5, timeout=5)
    assert sorted(f["data"]["request_id"] for f in frames) == request_ids
    await socket.silent(0.6)  # exactly one parse.completed per request
    by_id = {f["data"]["request_id"]: f["data"] for f in frames}
    for request_id in request_ids:
        final = await wait_final(hub, alice.headers, request_id)
        assert final["status"] == by_id[request_id]["status"]
        rest_wins = sum(1 for rid, put in zip(attempts, puts, strict=True)
                        if rid == request_id and put.status_code == 200)
        # either one PUT won (success) or the Redis key did (failure) and every PUT got 409
        assert rest_wins == (1 if final["status"] == "success" else 0)
    await socket.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_failed_push_is_retried_from_the_stored_request(
        redis_hub: tuple[RunningHub, aioredis.Redis]) -> None:
    hub, redis = redis_hub
    tasks = f"{hub.settings.redis_channel_prefix}parser:tasks"
    await redis.set(tasks, "not a list")  # every LPUSH now fails with WRONGTYPE
    alice = await register(hub.http)
    request_id = await submit(hub, alice.headers, "https://example.com/retry")
    await asyncio.sleep(0.3)
    await redis.delete(tasks)
    async with asyncio.timeout(8):
        while (raw := await redis.rpop(tasks)) is None:
            await asyncio.sleep(0.1)
    assert orjson.loads(raw) == {"id": request_id, "url": "https://example.com/retry", "user_id": alice.id}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_malformed_redis_result_fails_the_request(
        redis_hub: tuple[RunningHub, aioredis.Redis]) -> None:
    hub, redis = redis_hub
    alice = await register(hub.http)
    request_id = await submit(hub, alice.headers, "https://example.com/bad")
    await redis.set(f"{hub.settings.redis_channel_prefix}parser:results:{request_id}", b"{nope", ex=60)
    final = await wait_final(hub, alice.headers, request_id, timeout=5)
    assert final["status"] == "failure"
    assert "malformed" in final["error"]


# --- the embedded parser (SQLite backend, no REDIS_URL) ----------------------------------

@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_without_redis_the_hub_fetches_pages_itself(parse_settings: Settings,
                                                        pages: PageServer) -> None:
    assert parse_settings.redis_url is None
    async with serve_hub(parse_settings) as hub:
        alice = await register(hub.http)
        socket = await connect(hub.ws_url, alice.access_token)
        request_id = await submit(hub, alice.headers, pages.url("/page"))
        (frame,) = await socket.events(1)
        assert frame["data"] == {"request_id": request_id, "url": pages.url("/page"), "status": "success",
                                 "title": TITLE, "error": None}
        page = await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)
        assert page.text == PAGE
        await socket.close()
    async with serve_hub(replace(parse_settings, parser_allow_private=False)) as hub:
        request_id = await submit(hub, alice.headers, pages.url("/page"))
        final = await wait_final(hub, alice.headers, request_id)
        assert final["status"] == "failure"
        assert "refused" in final["error"]
    assert pages.hits["page"] == 1
