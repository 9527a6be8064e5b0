"""The hub's own WebSocket layer (`hub.ws_socket.HubSocket`): handshake, frame encoding and
parsing, what an idle socket costs, and sockets ending cleanly however their peer leaves."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from typing import TypeVar

import pytest
import websockets
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from hub.connection import event_frame, text_frame
from hub.http_protocol import BoundedHeadProtocol
from hub.ws_socket import HubSocket
from tests.conftest import RunningHub
from tests.wsutil import WAIT, connect, make_users, publish_to, raw_socket

T = TypeVar("T")


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_parse_back_to_their_data_at_every_length_encoding(size: int) -> None:
    data = b"x" * size
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    client.receive_data(text_frame(data))
    (frame,) = client.events_received()
    assert isinstance(frame, Frame)
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.TEXT, True, data)


def test_an_event_frame_carries_the_payload_under_type_event() -> None:
    payload = b'{"id":7,"name":"n","data":{"a":1},"created_at":"2026-12-02T10:00:00.000Z"}'
    client = Protocol(Side.CLIENT, state=State.OPEN)
    client.receive_data(event_frame(payload))
    (frame,) = client.events_received()
    assert isinstance(frame, Frame)
    assert json.loads(frame.data) == {"type": "event", **json.loads(payload)}


async def test_a_handshake_on_another_path_is_refused_with_404(hub: RunningHub) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with asyncio.timeout(WAIT):
            await websockets.connect(hub.ws_url.replace("/ws", "/elsewhere"))
    assert refused.value.response.status_code == 404


async def test_a_plain_http_get_of_ws_is_not_a_websocket(hub: RunningHub) -> None:
    response = await hub.http.get("/ws")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_the_handshake_answer_names_no_server_software(hub: RunningHub) -> None:
    async with asyncio.timeout(WAIT):
        ws = await websockets.connect(hub.ws_url)
    try:
        assert ws.response is not None
        assert "Server" not in ws.response.headers
    finally:
        await ws.close()


async def test_a_fragmented_client_message_is_one_frame(hub: RunningHub) -> None:
    ((_, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    await sock.ws.send(iter(['{"type":', ' "pi', 'ng"}']))
    assert await sock.next() == {"type": "pong"}
    await sock.close()


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(hub: RunningHub) -> None:
    ((_, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    protocol = sock.ws.protocol
    protocol.send_frame(Frame(Opcode.TEXT, b'{"type": "\xff"}'))
    sock.ws.transport.write(b"".join(protocol.data_to_send()))
    assert await sock.closed() == 1007


async def test_a_refresh_cut_short_by_a_close_leaves_no_coroutine_unawaited(hub: RunningHub) -> None:
    """A `refresh` frame starts a task; a bad frame read in the same chunk closes the socket,
    which cancels that task before it ever ran. Its work must still be closed properly, not
    reported ("coroutine ... was never awaited") when collected."""
    ((_, token),) = await make_users(hub.settings, 1)
    for _ in range(5):
        sock = await connect(hub.ws_url, token)
        protocol = sock.ws.protocol
        protocol.send_frame(Frame(Opcode.TEXT, json.dumps({"type": "refresh", "token": token}).encode()))
        protocol.send_frame(Frame(Opcode.TEXT, b'{"type": "\xff"}'))
        sock.ws.transport.write(b"".join(protocol.data_to_send()))
        assert await sock.closed() == 1007
    gc.collect()  # an unawaited coroutine is reported when collected (an error under pytest)


async def test_idle_sockets_hold_no_task_and_still_get_their_events(hub: RunningHub) -> None:
    """The hub runs in this test's event loop: its tasks are counted here. 30 authenticated
    sockets that idle add no task; the first event of each still arrives."""
    users = await make_users(hub.settings, 30)
    before = _server_tasks()
    sockets = await asyncio.gather(*(connect(hub.ws_url, token) for _, token in users))
    await asyncio.sleep(0.2)
    assert _server_tasks() == before
    await publish_to(hub, [user_id for user_id, _ in users])
    for sock in sockets:
        (frame,) = await sock.events(1)
        assert frame["id"] == 1
    await asyncio.gather(*(sock.close() for sock in sockets))


async def test_an_idle_socket_keeps_no_http_protocol_no_timer_and_no_task_set(hub: RunningHub) -> None:
    """What an idle socket holds (bench.presence_cost measures its bytes): the HTTP protocol
    that parsed its upgrade is freed at once, not left to a collection; its keepalive is a
    bucket of the process's one wheel; a token lasting beyond two keepalive turns arms no expiry
    timer; the finished start leaves no task set, no queue and no subscribe task."""
    users = await make_users(hub.settings, 20)
    gc.collect()
    gc.disable()  # what only the collector would free stays countable
    try:
        before = _live(BoundedHeadProtocol)
        sockets = await asyncio.gather(*(connect(hub.ws_url, token) for _, token in users))
        await asyncio.sleep(0.2)
        assert _live(BoundedHeadProtocol) == before
        mine = {user_id for user_id, _ in users}
        idle = [s for s in _instances(HubSocket)
                if s._connection is not None and s._connection.user_id in mine]
    finally:
        gc.enable()
    assert len(idle) == 20
    for socket in idle:
        assert isinstance(socket._timer, int) and socket._tasks is None
        connection = socket._connection
        assert connection is not None and connection._expiry is None and connection._queue is None
    registry = idle[0]._api.registry
    assert all(registry._users[user_id].subscribed is None for user_id in mine)
    await asyncio.gather(*(sock.close() for sock in sockets))


def _instances(kind: type[T]) -> list[T]:
    """The live objects of `kind` (weak proxies skipped: isinstance() of a dead one raises)."""
    return [obj for obj in gc.get_objects()
            if type(obj) not in (weakref.ProxyType, weakref.CallableProxyType) and isinstance(obj, kind)]


def _live(kind: type) -> int:
    return len(_instances(kind))


def _server_tasks() -> int:
    """Tasks running the hub's or uvicorn's code (not the test's websockets clients)."""
    def server_code(task: asyncio.Task[object]) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return code is not None and ("/hub/" in code.co_filename or "/uvicorn/" in code.co_filename)
    return sum(1 for task in asyncio.all_tasks() if server_code(task))


@pytest.mark.parametrize("garbage", [
    b"\x00" * 64,                          # unmasked, reserved bits clear, opcode 0: protocol error
    b"\xf1\x80abcd",                        # reserved bits set
    b"\x89\xfeabcd" + b"x" * 200,           # a ping over 125 bytes
    b"\x81\xff" + b"\x7f" * 8,              # a length of 2^63 - 1
])
async def test_garbage_after_the_handshake_closes_the_socket_and_logs_no_error(
        hub: RunningHub, garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await raw_socket(hub)
    writer.write(garbage)
    async with asyncio.timeout(WAIT):
        rest = await reader.read()  # until the server closes the connection
    assert rest[:1] == b"\x88"  # it said why in a close frame first
    code = int.from_bytes(rest[2:4], "big")
    assert code in (1002, 1009), rest
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_pings_before_the_auth_frame_are_answered_and_auth_still_works(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    reader, writer = await raw_socket(hub)
    client = Protocol(Side.CLIENT, state=State.OPEN)
    client.send_ping(b"early")
    client.send_text(json.dumps({"type": "auth", "token": token}).encode())
    writer.write(b"".join(client.data_to_send()))
    frames: list[Frame] = []
    async with asyncio.timeout(WAIT):
        while len(frames) < 2:
            client.receive_data(await reader.read(65536))
            frames.extend(e for e in client.events_received() if isinstance(e, Frame))
    assert (frames[0].opcode, bytes(frames[0].data)) == (Opcode.PONG, b"early")
    assert json.loads(frames[1].data)["user_id"] == user_id
    writer.close()


@pytest.mark.parametrize("backend", ["postgres"])  # with Redis, the last socket of a user unsubscribes
async def test_peers_leaving_while_events_flow_end_cleanly(hub: RunningHub,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Peers vanish without a closing handshake while events are being written to them: each
    socket ends from its transport's `connection_lost`, possibly inside the broker's callback
    that is writing to the user's connections (so the registry's unregister is deferred, and
    the last socket of a user starts an UNSUBSCRIBE in the background). None of it may surface
    as an ERROR log or as a task exception never retrieved. A timing race: each round drops 20
    sockets while events flow to all of them."""
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
