"""Exchange requests (protocol §8) on both backends, through the real exchange service
(`python -m parser_bridge.exchange_service`, a separate process), including the service being
down at first and never coming up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx

from hub.settings import Settings
from tests.conftest import Account, RunningHub, free_port, register, serve_hub
from tests.wsutil import connect

TOKEN = "test-exchange-token"
ORDER = {"exchange_rate": 75.5, "bills": [
    {"denomination_id": 1, "denomination": 10.0, "count": 5},
    {"denomination_id": 2, "denomination": 20.0, "count": 3},
    {"denomination_id": 3, "denomination": 0.05, "count": 1},
]}
BREAKDOWN = [{"denomination_id": 1, "subtotal_rub": 3775.0}, {"denomination_id": 2, "subtotal_rub": 4530.0},
             {"denomination_id": 3, "subtotal_rub": 3.78}]  # 3.775 rounds half-up
TOTAL = 8308.78


@contextlib.asynccontextmanager
async def exchange_service(hub_url: str, port: int, delay: str = "0.2-0.4",
                           retry_window: str = "10") -> AsyncIterator[str]:
    """The real exchange service on `port`, ready to take requests."""
    environ = {**os.environ, "HUB_URL": hub_url, "EXCHANGE_SERVICE_TOKEN": TOKEN,
               "EXCHANGE_DELAY": delay, "EXCHANGE_RESULT_RETRY_WINDOW": retry_window}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parser_bridge.exchange_service", "--host", "127.0.0.1", "--port",
        str(port), env=environ, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(15), httpx.AsyncClient() as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url + "/healthz")).status_code == 200:
                        break
                assert process.returncode is None, "the exchange service exited"
                await asyncio.sleep(0.1)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(20):
            assert await process.wait() == 0


async def submit(hub: RunningHub, account: Account, order: dict[str, Any] = ORDER) -> int:
    answer = await hub.http.post("/api/v1/exchange", json=order, headers=account.headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending"
    return int(answer.json()["request_id"])


async def test_exchange_end_to_end_through_the_real_service(settings: Settings) -> None:
    port = free_port()
    hub_settings = replace(settings, exchange_service_url=f"http://127.0.0.1:{port}")
    async with serve_hub(hub_settings) as hub, exchange_service(hub.base_url, port):
        alice = await register(hub.http)
        socket = await connect(hub.ws_url, alice.access_token)
        many = {"exchange_rate": 2, "bills": [
            {"denomination_id": n, "denomination": 1, "count": n} for n in range(1, 21)]}
        started = time.monotonic()
        request_id = await submit(hub, alice)
        second = await submit(hub, alice, many)
        frames = {f["data"]["request_id"]: f for f in await socket.events(2, timeout=15)}
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, elapsed  # 20 bills of 0.2-0.4 s each, computed concurrently
        frame = frames[request_id]
        assert frame["name"] == "exchange.result"
        assert frame["data"] == {"request_id": request_id, "status": "completed", "breakdown": BREAKDOWN,
                                 "total_rub": TOTAL, "error": None}
        assert frames[second]["data"]["total_rub"] == 2 * sum(range(1, 21))
        shown = await hub.http.get(f"/api/v1/exchange/{request_id}", headers=alice.headers)
        assert shown.json() == frame["data"]
        assert b'"total_rub":8308.78' in shown.content
        await socket.silent(0.3)
        await socket.close()


async def test_the_service_being_down_at_first_only_delays_the_result(settings: Settings) -> None:
    port = free_port()
    hub_settings = replace(settings, exchange_service_url=f"http://127.0.0.1:{port}")
    async with serve_hub(hub_settings) as hub:
        alice = await register(hub.http)
        socket = await connect(hub.ws_url, alice.access_token)
        request_id = await submit(hub, alice)
        await asyncio.sleep(1.5)  # a few failed hand-overs
        pending = await hub.http.get(f"/api/v1/exchange/{request_id}", headers=alice.headers)
        assert pending.json() == {"request_id": request_id, "status": "pending", "breakdown": [],
                                  "total_rub": None, "error": None}
        async with exchange_service(hub.base_url, port, delay="0.1"):
            (frame,) = await socket.events(1, timeout=25)
        assert frame["data"]["status"] == "completed"
        assert frame["data"]["total_rub"] == TOTAL
        await socket.close()


async def test_an_unreachable_service_fails_the_request_after_the_window(settings: Settings) -> None:
    hub_settings = replace(settings, exchange_service_url=f"http://127.0.0.1:{free_port()}",
                           exchange_retry_window=2.0)
    async with serve_hub(hub_settings) as hub:
        alice = await register(hub.http)
        socket = await connect(hub.ws_url, alice.access_token)
        started = time.monotonic()
        request_id = await submit(hub, alice)
        (frame,) = await socket.events(1, timeout=10)
        assert 1.0 < time.monotonic() - started < 5.0
        data = frame["data"]
        assert (data["request_id"], data["status"], data["breakdown"], data["total_rub"]) == (
            request_id, "failed", [], None)
        assert "unreachable" in data["error"]
        late = await hub.http.put("/api/exchange_result", json={
            "token": TOKEN, "request_id": request_id, "breakdown": BREAKDOWN})
        assert late.status_code == 409
        await socket.close()


async def test_result_callback_checks_token_request_and_breakdown(settings: Settings) -> None:
    # the service never answers, so the request stays pending for the callbacks below
    hub_settings = replace(settings, exchange_service_url=f"http://127.0.0.1:{free_port()}")
    async with serve_hub(hub_settings) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        socket = await connect(hub.ws_url, alice.access_token)
        request_id = await submit(hub, alice)
        body = {"token": TOKEN, "request_id": request_id, "breakdown": BREAKDOWN}
        for token in ("wrong", None, 42):
            denied = await hub.http.put("/api/exchange_result", json={**body, "token": token})
            assert denied.status_code == 403
            assert denied.json()["error"] == "forbidden"
        assert (await hub.http.put("/api/exchange_result", json=[body])).status_code == 403
        unknown = await hub.http.put("/api/exchange_result", json={**body, "request_id": request_id + 999})
        assert unknown.status_code == 404
        for bad in (BREAKDOWN[:2], [*BREAKDOWN, {"denomination_id": 9, "subtotal_rub": 1}],
                    [{**BREAKDOWN[0], "subtotal_rub": 377.5}, *BREAKDOWN[1:]], "x"):
            refused = await hub.http.put("/api/exchange_result", json={**body, "breakdown": bad})
            assert refused.status_code == 422, refused.text
            assert "breakdown" in refused.json()["fields"]
        not_json = await hub.http.put("/api/exchange_result", content=b"{",
                                      headers={"Content-Type": "application/json"})
        assert not_json.status_code == 422
        await socket.silent(0.2)

        ok = await hub.http.put("/api/exchange_result", json=body)
        assert ok.status_code == 200
        assert ok.json() == {"status": "ok"}
        (frame,) = await socket.events(1)
        assert frame["data"]["total_rub"] == TOTAL
        again = await hub.http.put("/api/exchange_result", json=body)
        assert again.status_code == 409

        mine = await hub.http.get(f"/api/v1/exchange/{request_id}", headers=alice.headers)
        assert mine.json()["status"] == "completed"
        for headers in (bob.headers, {}):
            theirs = await hub.http.get(f"/api/v1/exchange/{request_id}", headers=headers)
            assert theirs.status_code == (404 if headers else 401)
        assert (await hub.http.get("/api/v1/exchange/99999999999", headers=alice.headers)).status_code == 404
        await socket.close()


async def test_submit_validates_and_needs_a_configured_service(settings: Settings) -> None:
    async with serve_hub(replace(settings, exchange_service_url=None)) as hub:
        alice = await register(hub.http)
        down = await hub.http.post("/api/v1/exchange", json=ORDER, headers=alice.headers)
        assert down.status_code == 503
        assert "EXCHANGE_SERVICE_URL" in down.json()["detail"]
    hub_settings = replace(settings, exchange_service_url=f"http://127.0.0.1:{free_port()}")
    async with serve_hub(hub_settings) as hub:
        alice = await register(hub.http)
        for order in ({**ORDER, "exchange_rate": 0}, {**ORDER, "bills": []}, {"bills": ORDER["bills"]},
                      {**ORDER, "bills": [{**ORDER["bills"][0], "count": -1}]}, {**ORDER, "extra": 1}):
            refused = await hub.http.post("/api/v1/exchange", json=order, headers=alice.headers)
            assert refused.status_code == 422, (order, refused.text)
        assert (await hub.http.post("/api/v1/exchange", json=ORDER)).status_code == 401
        paths = (await hub.http.get("/api/openapi.json")).json()["paths"]
        assert "post" in paths["/api/v1/exchange"]
        assert "get" in paths["/api/v1/exchange/{request_id}"]
        assert "put" in paths["/api/exchange_result"]


async def test_the_service_refuses_callers_without_the_token_and_bad_jobs() -> None:
    port = free_port()
    async with exchange_service("http://127.0.0.1:9", port, delay="0", retry_window="0.5") as url, \
            httpx.AsyncClient() as client:
        job = {"request_id": 1, **ORDER}
        assert (await client.post(url + "/api/exchange_async", json=job)).status_code == 403
        auth = {"Authorization": f"Bearer {TOKEN}"}
        bad = await client.post(url + "/api/exchange_async", json={**job, "bills": []}, headers=auth)
        assert bad.status_code == 422
        assert bad.json()["error"] == "invalid"
        ok = await client.post(url + "/api/exchange_async", json=job, headers=auth)
        assert ok.json() == {"status": "ok"}
