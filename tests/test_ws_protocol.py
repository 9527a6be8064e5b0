"""The `/ws` endpoint's protocol rules (§4): handshake, first-frame auth, frames, limits, expiry."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
import websockets
from sqlalchemy import update

from hub import streams
from hub.close_codes import CloseCode
from hub.db import Database
from hub.metrics import Metrics
from hub.models import Stream
from hub.retention import Retention
from hub.settings import Settings
from tests.conftest import RunningHub, serve_hub
from tests.wsutil import WAIT, Socket, StalledReader, connect, make_users, mint, publish_to


async def _closed_code(url: str, first: str | None, **options: object) -> int | None:
    async with asyncio.timeout(WAIT):
        async with websockets.connect(url, **options) as ws:  # type: ignore[arg-type]
            if first is not None:
                await ws.send(first)
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.mark.parametrize("first", [
    '{"type": "auth", "token": "garbage"}',
    '{"type": "auth"}',
    '{"type": "ping"}',
    "not json",
    '["auth"]',
    '{"type": "auth", "token": "x", "last_event_id": -1}',
])
async def test_a_bad_first_frame_closes_with_4001(hub: RunningHub, first: str) -> None:
    assert await _closed_code(hub.ws_url, first) == 4001


async def test_no_auth_frame_within_the_limit_closes_with_4001(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_auth_timeout=0.3)) as hub:
        assert await _closed_code(hub.ws_url, None) == 4001


async def test_ping_pong_and_bad_frames_get_answers(hub: RunningHub) -> None:
    ((_, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    assert sock.welcome["last_event_id"] == 0
    assert sock.welcome["recovered"] is False
    await sock.send({"type": "ping"})
    assert await sock.next() == {"type": "pong"}
    for bad in ({"type": "dance"}, {"no": "type"}, [1, 2]):
        await sock.ws.send(json.dumps(bad))
        frame = await sock.next()
        assert frame["type"] == "error"
        assert frame["code"] == "bad_frame"
    await sock.ws.send("{not json")
    assert (await sock.next())["code"] == "bad_frame"
    await sock.send({"type": "ping"})
    assert await sock.next() == {"type": "pong"}
    await sock.close()


async def test_a_client_frame_over_4096_bytes_closes_with_1009(hub: RunningHub) -> None:
    ((_, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    await sock.ws.send(json.dumps({"type": "ping", "pad": "x" * 4100}))
    assert await sock.closed() == 1009


async def test_too_many_frames_close_with_4008(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_rate_limit=2, ws_rate_burst=5)) as hub:
        ((_, token),) = await make_users(hub.settings, 1)
        sock = await connect(hub.ws_url, token)
        for _ in range(20):
            await sock.send({"type": "ping"})
        assert await sock.closed() == 4008


async def test_the_per_user_connection_cap_closes_the_extra_one_with_4008(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_max_connections_per_user=2)) as hub:
        ((user_id, token),) = await make_users(hub.settings, 1)
        first = await connect(hub.ws_url, token)
        second = await connect(hub.ws_url, token)
        frame = json.dumps({"type": "auth", "token": token})
        assert await _closed_code(hub.ws_url, frame) == 4008
        await publish_to(hub, [user_id])
        assert len(await first.events(1)) == 1
        assert len(await second.events(1)) == 1
        await first.close()
        third = await connect(hub.ws_url, token)
        await third.close()
        await second.close()


async def test_origin_allow_list(settings: Settings) -> None:
    allowed = Settings.from_env({"ALLOWED_ORIGINS": "HTTPS://Chat.Example:443/"}).allowed_origins
    async with serve_hub(replace(settings, allowed_origins=allowed)) as hub:
        ((_, token),) = await make_users(hub.settings, 1)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(hub.ws_url, origin="https://evil.example")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        good = await connect(hub.ws_url, token, origin="https://chat.example")
        await good.close()
        for lookalike in ("https://chat.example:8443", "http://chat.example", "https://chat.example.evil"):
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(hub.ws_url, origin=lookalike)  # type: ignore[arg-type]
        no_origin = await connect(hub.ws_url, token)  # a non-browser client sends none
        await no_origin.close()


async def test_the_connection_closes_with_4001_when_its_token_expires(hub: RunningHub) -> None:
    ((user_id, _),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, mint(hub.settings, user_id, ttl=2))
    assert await sock.closed(timeout=6) == 4001


async def test_refresh_in_band_keeps_the_connection_past_the_first_expiry(hub: RunningHub) -> None:
    ((user_id, _),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, mint(hub.settings, user_id, ttl=2))
    await sock.send({"type": "refresh", "token": mint(hub.settings, user_id, ttl=600)})
    refreshed = await sock.next()
    assert refreshed["type"] == "refreshed"
    assert refreshed["expires_at"].endswith("Z")
    await asyncio.sleep(3)
    await publish_to(hub, [user_id])
    assert len(await sock.events(1)) == 1
    await sock.close()


async def test_refresh_with_a_bad_token_closes_4001_and_with_another_users_4003(hub: RunningHub) -> None:
    (a, a_token), (b, b_token) = await make_users(hub.settings, 2)
    sock: Socket = await connect(hub.ws_url, a_token)
    await sock.send({"type": "refresh", "token": "garbage"})
    assert await sock.closed() == 4001
    sock = await connect(hub.ws_url, a_token)
    await sock.send({"type": "refresh", "token": b_token})
    assert await sock.closed() == 4003
    del a, b


async def test_a_deleted_users_token_cannot_connect(hub: RunningHub) -> None:
    from sqlalchemy import delete

    from hub.db import Database
    from hub.models import User

    ((user_id, token),) = await make_users(hub.settings, 1)
    db = Database(hub.settings.database_url)
    db.open()
    try:
        async with db.sessions.begin() as session:
            await session.execute(delete(User).where(User.id == user_id))
    finally:
        await db.close()
    assert await _closed_code(hub.ws_url, json.dumps({"type": "auth", "token": token})) == 4001


async def test_an_idle_healthy_socket_lives_through_many_server_pings(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_ping_interval=0.3)) as hub:
        ((user_id, token),) = await make_users(hub.settings, 1)
        sock = await connect(hub.ws_url, token)  # the client library answers pings by itself
        await asyncio.sleep(2.5)
        await publish_to(hub, [user_id])
        assert len(await sock.events(1)) == 1
        await sock.close()


async def test_a_peer_that_never_answers_pings_is_dropped(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_ping_interval=0.3)) as hub:
        ((_, token),) = await make_users(hub.settings, 1)
        silent = await StalledReader.open(hub.ws_url, token)  # reads nothing, so answers no ping
        await asyncio.sleep(1.5)
        await silent.read_to_end(timeout=5)
        assert silent.close_code == 1011


async def test_missed_events_trimmed_away_close_the_socket_with_history_gone(hub: RunningHub) -> None:
    """An event that skips ahead sends the connection to the store for the ids between; when
    retention removed them, the hub cannot deliver every id in order and closes with
    HISTORY_GONE (4010), not SLOW_CONSUMER (4009, whose promise is that nothing is lost); the
    resume from where it stopped then answers `recovered: false`."""
    ((user_id, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    start = sock.welcome["last_event_id"]
    db = Database(hub.settings.database_url)
    db.open()
    try:
        async with db.sessions.begin() as session:  # two events the broker never carries...
            await streams.append(session, [user_id], "test.gone", b"{}")
            await streams.append(session, [user_id], "test.gone", b"{}")
            await session.execute(update(Stream).where(Stream.user_id == user_id)
                                  .values(published_id=start + 2))  # ...nor the relay republishes
        await Retention(db, Metrics(), keep_events=1, keep_seconds=3600).step()  # start + 1 is gone
    finally:
        await db.close()
    assert (await publish_to(hub, [user_id]))[str(user_id)] == start + 3
    assert await sock.closed() == CloseCode.HISTORY_GONE
    resumed = await connect(hub.ws_url, token, last_event_id=start, epoch=sock.welcome["epoch"])
    assert resumed.welcome["recovered"] is False
    await resumed.close()
