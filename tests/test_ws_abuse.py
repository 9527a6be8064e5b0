"""A WebSocket client that misbehaves on purpose costs the hub little and nobody else anything:
every frame counts against the frame budget, a socket the hub is closing is not read any more,
fragmented messages are bounded, a malformed handshake is refused without an error, and a peer
that stops reading for good is ended as a slow consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol, Side, State

from hub.settings import Settings
from hub.ws_socket import CLOSE_GRACE
from tests.conftest import RunningHub, serve_hub
from tests.wsutil import (
    HANDSHAKE,
    WAIT,
    StalledReader,
    client_frame,
    connect,
    make_users,
    publish_to,
    raw_socket,
)

PING, CONT, TEXT = 0x9, 0x0, 0x1


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def _server_frames(reader: asyncio.StreamReader, timeout: float = WAIT) -> list[Frame]:
    """Every frame the server sends until it ends the connection (EOF or reset)."""
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    frames: list[Frame] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                break
            if not data:
                break
            client.receive_data(data)
            frames.extend(e for e in client.events_received() if isinstance(e, Frame))
    return frames


def _close_code(frames: list[Frame]) -> int | None:
    closes = [f for f in frames if f.opcode is Opcode.CLOSE]
    return Close.parse(closes[0].data).code if closes else None


async def _flood(writer: asyncio.StreamWriter, blob: bytes, seconds: float) -> None:
    """Write `blob` over and over for `seconds`, or until the server stops taking it."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while True:
                writer.write(blob)
                await writer.drain()


async def test_a_ping_flood_before_auth_is_closed_4008_while_others_stay_served(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    victim = await connect(hub.ws_url, token)
    reader, writer = await raw_socket(hub)
    started = time.monotonic()
    flooding = asyncio.create_task(_flood(writer, client_frame(PING, b"p") * 50_000, seconds=6))
    frames = await _server_frames(reader)
    assert _close_code(frames) == 4008
    assert time.monotonic() - started < 3
    pongs = [f for f in frames if f.opcode is Opcode.PONG]
    assert len(pongs) <= hub.settings.ws_rate_burst  # nothing past the budget was parsed
    for n in range(3):  # the flood is still being written meanwhile
        began = time.monotonic()
        async with asyncio.timeout(5):
            assert (await hub.http.get("/healthz")).status_code == 200
            await publish_to(hub, [user_id], data={"n": n})
            (event,) = await victim.events(1)
        assert event["data"] == {"n": n}
        assert time.monotonic() - began < 2
    flooding.cancel()
    writer.close()
    await victim.close()


async def test_bytes_after_the_close_are_not_parsed_and_the_socket_is_dropped(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_auth_timeout=0.3)) as hub:
        reader, writer = await raw_socket(hub)
        async with asyncio.timeout(WAIT):
            head = await reader.readexactly(2)
            closing = await reader.readexactly(head[1])
        assert head[0] == 0x88 and int.from_bytes(closing[:2], "big") == 4001  # no auth frame in time
        writer.write(client_frame(PING, b"after the close"))  # answered with a pong if parsed
        assert await _server_frames(reader) == []  # and the server's EOF came right after the close
        # the server drops its end too after a short grace: then writing to it is refused
        with pytest.raises(ConnectionError):  # noqa: PT012
            async with asyncio.timeout(CLOSE_GRACE + 5):
                while True:
                    writer.write(client_frame(PING, b"x"))
                    await writer.drain()
                    await asyncio.sleep(0.1)
        writer.close()


async def test_a_flood_of_empty_continuations_is_closed_at_the_fragment_bound(settings: Settings) -> None:
    generous = replace(settings, ws_rate_limit=1e6, ws_rate_burst=1_000_000)  # only the fragment bound
    async with serve_hub(generous) as hub:
        reader, writer = await raw_socket(hub)
        # a ping after each fragment (control frames may come between fragments): its pong shows
        # how far the hub parsed
        empty_then_ping = client_frame(CONT, fin=False) + client_frame(PING, b"k")
        writer.write(client_frame(TEXT, b"{", fin=False))
        flooding = asyncio.create_task(_flood(writer, empty_then_ping * 100_000, seconds=5))
        frames = await _server_frames(reader)
        assert _close_code(frames) == 1009
        pongs = [f for f in frames if f.opcode is Opcode.PONG]
        assert len(pongs) <= hub.settings.ws_max_fragments  # nothing kept or parsed past the bound
        flooding.cancel()
        writer.close()


async def test_a_message_over_the_size_bound_across_fragments_closes_with_1009(hub: RunningHub) -> None:
    reader, writer = await raw_socket(hub)
    writer.write(client_frame(TEXT, b"x" * 3000, fin=False) + client_frame(CONT, b"x" * 3000))
    assert _close_code(await _server_frames(reader)) == 1009
    writer.close()


async def test_every_data_frame_counts_before_auth_too(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_rate_limit=1, ws_rate_burst=5)) as hub:
        reader, writer = await raw_socket(hub)
        writer.write(client_frame(TEXT, b"{", fin=False) + client_frame(CONT, b" ", fin=False) * 10)
        assert _close_code(await _server_frames(reader)) == 4008
        writer.close()


async def test_a_duplicate_origin_header_is_refused_with_400_and_logs_no_error(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    port = int(hub.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE + b"Origin: https://a.example\r\nOrigin: https://b.example\r\n\r\n")
    async with asyncio.timeout(WAIT):
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    writer.close()
    assert (await hub.http.get("/healthz")).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


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
                while await _metric(hub, 'hub_connections{transport="ws"}') != 0:
                    await asyncio.sleep(0.1)
            assert await _metric(hub, 'hub_slow_consumer_disconnects_total{transport="ws"}') == 1
        finally:
            stalled._sock.close()
