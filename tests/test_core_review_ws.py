"""Review of `/ws` (§4): connections end when the contract says they end, whatever the peer does."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import replace

import pytest

from hub.settings import Settings
from tests.conftest import RunningHub, serve_hub
from tests.wsutil import StalledReader, connect, make_users, publish_to


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def _metric(hub: RunningHub, name: str) -> float:
    text = (await hub.http.get("/metrics")).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


async def test_a_peer_that_stops_reading_for_good_is_ended_as_a_slow_consumer(settings: Settings) -> None:
    """The peer's TCP stack stays alive but its application never reads again: the server's send
    buffer fills and the keepalive cannot drop the peer either (its close waits for that buffer
    to drain). Overflowing the outbound bound must still end the connection: unregistered,
    counted as a slow consumer, not held for as long as the peer lives."""
    async with serve_hub(replace(settings, ws_ping_interval=30, ws_queue_max_messages=20)) as hub:
        ((user_id, token),) = await make_users(hub.settings, 1)
        stalled = await StalledReader.open(hub.ws_url, token)
        try:
            async def burst() -> None:
                for _ in range(15):
                    await publish_to(hub, [user_id], data={"pad": "x" * 60_000})

            async with asyncio.timeout(30):
                await asyncio.gather(*(burst() for _ in range(10)))  # ~9 MB, 150 events
            async with asyncio.timeout(5):
                while await _metric(hub, "hub_connections") != 0:
                    await asyncio.sleep(0.1)
            assert await _metric(hub, "hub_slow_consumer_disconnects_total") == 1
        finally:
            stalled._sock.close()


@pytest.mark.parametrize("backend", ["postgres"])  # Redis: the last socket's unsubscribe awaits
async def test_peers_leaving_while_events_flow_end_cleanly(hub: RunningHub,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """When a send fails because the peer left, the writer can finish just before the reader
    sees the disconnect. Its done-callback, already scheduled, used to cancel the handler after
    it had left the read loop: the CancelledError hit the unregister (so the UNSUBSCRIBE) and
    uvicorn logged "Exception in ASGI application"; the writer's exception was never retrieved
    either. A timing race: each round closes 20 sockets while events flow to all of them."""
    users = await make_users(hub.settings, 20)
    user_ids = [user_id for user_id, _ in users]
    stop = asyncio.Event()

    async def pump() -> None:
        while not stop.is_set():
            await publish_to(hub, user_ids)

    pumps = [asyncio.create_task(pump()) for _ in range(12)]
    errors: list[str] = []
    try:
        async with asyncio.timeout(90):
            for _ in range(60):
                sockets = await asyncio.gather(*(connect(hub.ws_url, token) for _, token in users))
                await asyncio.sleep(0.05)
                for sock in sockets:
                    sock.ws.transport.close()  # gone without a closing handshake
                await asyncio.sleep(0.05)
                gc.collect()  # "Task exception was never retrieved" is reported at collection
                errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
                if errors:
                    break
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*pumps)
    assert errors == []
