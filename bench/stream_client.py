"""The load generator's HTTP event stream client (protocol §12): one `GET /api/v1/stream` per
user over a raw asyncio connection, its chunked body and SSE messages parsed by hand, so that the
client costs little and the hub is what is measured. It is a `Client` of the same `Fleet` as the
WebSocket clients (bench/loadgen.py): every event goes through the same checks (lost, duplicate
or out of order, misrouted) and the same latency count.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from bench.loadgen import Client

if TYPE_CHECKING:
    from bench.loadgen import Fleet

STREAM = "stream"


class StreamClient(Client, asyncio.Protocol):  # type: ignore[misc]
    """One event stream of one user; `close_code` stays None, `error` is the stream's final
    `error` event's code."""

    def __init__(self, fleet: Fleet, user_id: int, token: str, resume: tuple[int, str] | None) -> None:
        super().__init__(fleet, user_id, token, resume)
        self.raw: asyncio.Transport | None = None
        self.error: str | None = None
        self._head = True  # still reading the response head
        self._chunked = False
        self._buffer = bytearray()  # raw bytes not yet parsed
        self._body = bytearray()  # the body so far, up to an incomplete SSE message

    async def open(self, url: str) -> None:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, parts.hostname, parts.port)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        headers = f"Host: bench\r\nAuthorization: Bearer {self.token}\r\n"
        if self.resume is not None:
            headers += f"Last-Event-ID: {self.resume[1]}:{self.resume[0]}\r\n"
        transport.write(f"GET /api/v1/stream HTTP/1.1\r\n{headers}\r\n".encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            del buffer[:end + 4]
            self._head = False
            if not head.startswith(b"http/1.1 200"):
                if not self.welcome.done():
                    self.welcome.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                self.close()
                return
            self._chunked = b"transfer-encoding: chunked" in head
        if self._chunked:
            self._dechunk()
        else:
            self._body += buffer
            buffer.clear()
            self._messages()

    def _dechunk(self) -> None:
        buffer, at = self._buffer, 0
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                break
            size = int(buffer[at:line_end], 16)
            if size == 0:  # the last chunk: the stream is over
                at = len(buffer)
                break
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            chunk = bytes(buffer[start:start + size])
            at = start + size + 2
            if not self._body and chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == size - 2:
                self._message(chunk[:-2])  # the hub's usual chunk: one whole message
            else:
                self._body += chunk
                self._messages()
        del buffer[:at]

    def _messages(self) -> None:
        body, at = self._body, 0
        while (end := body.find(b"\n\n", at)) >= 0:
            self._message(bytes(body[at:end]))
            at = end + 2
        del body[:at]

    def _message(self, raw: bytes) -> None:
        if (raw.startswith(b"id: ") and self.welcome.done()
                and (data_at := raw.find(b"\ndata: ")) >= 0):
            # after the welcome, a message with an id is an event; its data comes last
            self.fleet.on_event(self, orjson.loads(raw[data_at + 7:]))
            return
        if raw.startswith(b":"):
            return  # a ping comment
        fields: dict[bytes, bytes] = {}
        for line in raw.split(b"\n"):
            name, _, value = line.partition(b": ")
            fields[name] = value
        event = fields.get(b"event")
        data = fields.get(b"data", b"{}")
        if event == b"welcome":
            message: dict[str, Any] = orjson.loads(data)
            self.epoch = message.get("epoch", "")
            self.last_id = self.base_id = int(message.get("last_event_id", 0))
            if self.resume is not None and message.get("recovered"):
                self.last_id = self.base_id = self.resume[0]
            if not self.welcome.done():
                self.welcome.set_result(message)
        elif event == b"error":
            self.error = orjson.loads(data).get("code")
        elif b"id" in fields:
            self.fleet.on_event(self, orjson.loads(data))
        # else: a signal (presence, typing), not counted

    def connection_lost(self, exc: Exception | None) -> None:
        self.disconnected.set()
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before welcome ({self.error})"))
        self.fleet.on_closed(self)

    def close(self) -> None:
        if self.raw is not None and not self.disconnected.is_set():
            self.raw.close()
