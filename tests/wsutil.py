"""A thin test-side WebSocket speaker of the protocol (§4), with every wait bounded."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from auth.tokens import ACCESS, TokenCodec
from hub.db import Database
from hub.settings import Settings
from hub.users import create_user
from tests.conftest import RunningHub, unique_name

WAIT = 10.0


class Socket:
    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome

    async def next(self, timeout: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            frame: dict[str, Any] = json.loads(await self.ws.recv())
            return frame

    async def events(self, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        frames = []
        async with asyncio.timeout(timeout):
            while len(frames) < count:
                frame = json.loads(await self.ws.recv())
                assert frame["type"] == "event", frame
                frames.append(frame)
        return frames

    async def silent(self, seconds: float = 0.3) -> None:
        """Assert nothing arrives for `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                frame = await self.ws.recv()
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def closed(self, timeout: float = WAIT) -> int | None:
        """Read until the server closes; the close code."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.ws.recv()
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

    async def close(self) -> None:
        await self.ws.close()


async def connect(url: str, token: str, *, last_event_id: int | None = None, epoch: str | None = None,
                  **options: Any) -> Socket:
    """Open, authenticate, and read the welcome frame."""
    async with asyncio.timeout(WAIT):
        ws = await websockets.connect(url, **options)
        frame: dict[str, Any] = {"type": "auth", "token": token}
        if last_event_id is not None:
            frame["last_event_id"] = last_event_id
        if epoch is not None:
            frame["epoch"] = epoch
        await ws.send(json.dumps(frame))
        welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return Socket(ws, welcome)


async def publish(http: httpx.AsyncClient, api_key: str, user_ids: list[int], name: str = "test.event",
                  data: dict[str, Any] | None = None, **headers: str) -> dict[str, int]:
    response = await http.post(
        "/api/v1/publish", json={"user_ids": user_ids, "name": name, "data": data or {}},
        headers={"Authorization": f"Bearer {api_key}", **headers},
    )
    assert response.status_code == 202, response.text
    events: dict[str, int] = response.json()["events"]
    return events


async def publish_to(hub: RunningHub, user_ids: list[int], name: str = "test.event",
                     data: dict[str, Any] | None = None) -> dict[str, int]:
    assert hub.settings.hub_api_key is not None
    return await publish(hub.http, hub.settings.hub_api_key, user_ids, name, data)


async def make_users(settings: Settings, count: int, access_ttl: int | None = None) -> list[tuple[int, str]]:
    """Create `count` users straight in the database (no password hashing) and mint each an access
    token with the hub's secret: (user_id, token) pairs. For tests that need many users fast."""
    db = Database(settings.database_url)
    db.open()
    try:
        async with db.sessions.begin() as session:
            users = [await create_user(session, unique_name("m")) for _ in range(count)]
            ids = [user.id for user in users]
    finally:
        await db.close()
    codec = TokenCodec(settings.jwt_secret, settings.jwt_algorithm,
                       access_ttl or settings.access_token_ttl, settings.refresh_token_ttl)
    return [(user_id, codec.issue(user_id, ACCESS)[0]) for user_id in ids]


def mint(settings: Settings, user_id: int, ttl: int) -> str:
    codec = TokenCodec(settings.jwt_secret, settings.jwt_algorithm, ttl, settings.refresh_token_ttl)
    return codec.issue(user_id, ACCESS)[0]


class StalledReader:
    """A WebSocket client that stops reading from its socket, to play a slow consumer: a raw
    TCP socket with a tiny receive buffer, spoken to with websockets' sans-I/O protocol (no
    keepalive of its own, no read-ahead)."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self._sock = sock
        self._protocol = protocol
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, url: str, token: str) -> StalledReader:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        async with asyncio.timeout(WAIT):
            await loop.sock_connect(sock, (uri.host, uri.port))
            protocol = ClientProtocol(uri)
            protocol.send_request(protocol.connect())
            await loop.sock_sendall(sock, b"".join(protocol.data_to_send()))
            reader = cls(sock, protocol)
            while protocol.handshake_exc is None and protocol.state is not State.OPEN:
                await reader._receive_some()
            protocol.send_text(json.dumps({"type": "auth", "token": token}).encode())
            await loop.sock_sendall(sock, b"".join(protocol.data_to_send()))
            while not reader.frames:
                await reader._receive_some()
        assert reader.frames[0]["type"] == "welcome", reader.frames
        return reader

    async def _receive_some(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self._sock, 65536)
        if not data:
            self._protocol.receive_eof()
        else:
            self._protocol.receive_data(data)
        for event in self._protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.frames.append(json.loads(event.data))
        if self._protocol.close_rcvd is not None:
            self.close_code = self._protocol.close_rcvd.code
        return bool(data)

    async def read_to_end(self, timeout: float = 30.0) -> None:
        """Resume reading: everything the server still sends, up to its close."""
        async with asyncio.timeout(timeout):
            while self.close_code is None and await self._receive_some():
                pass
        self._sock.close()


HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def raw_socket(hub: RunningHub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection past the handshake, spoken to byte by byte."""
    port = int(hub.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE + b"\r\n")
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's own example key and answer
    return reader, writer


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, length: int | None = None) -> bytes:
    """A client frame's bytes, written out by hand so that it may break the rules: any opcode,
    reserved bits, no mask, a declared `length` other than the payload's."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
