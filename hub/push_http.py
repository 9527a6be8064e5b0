"""The HTTP/1.1 client that carries Web Push requests: keep-alive TLS connections per push
service, lean enough that a push costs little more than its encryption.

Why not httpx: its pool scanned every connection on each request and its layers cost several
times the encryption of a push (bench/README.md, Web Push). Push services are few origins
(FCM, Mozilla, Apple, Microsoft) receiving many small POSTs, so a pool per origin of
connections that each carry one request at a time (no pipelining) is enough; httptools (the C
parser uvicorn uses) reads the answers.

- A connection goes to an address the caller checked (hub/address_policy.py) with the host's
  name for TLS (SNI and certificate verification against the caller's `SSLContext`), so a name
  that resolves elsewhere a moment later (DNS rebinding) is not followed.
- An idle connection is reused until the server closes it or it has been idle `idle_seconds`;
  one that failed, timed out or answered `Connection: close` is closed.
- Any failure before a whole answer arrived is `PushHttpError` (the push may or may not have
  reached the service). The caller bounds how many requests run at once; the pool does not.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httptools

MAX_ANSWER_BYTES = 64 * 1024  # a push service's answer is a status and a few headers


class PushHttpError(Exception):
    """No whole answer: connect, TLS, reset, timeout, or an answer that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    """One TLS connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._parser: Any = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._retry_after: str | None = None
        self._body = bytearray()
        self._head_done = False
        self._header_name = b""
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._head_done and self._parser is not None and not exc:
                self._finish()  # an answer without a length ends with the connection
            else:
                self._waiter.set_exception(PushHttpError(f"connection lost: {exc!r}"))

    def eof_received(self) -> bool:
        return False  # close the connection

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        assert self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._status, self._retry_after, self._head_done = 0, None, False
        self._body.clear()
        self.transport.write(request)
        return self._waiter

    def done(self) -> None:
        """The caller took the answer: the connection may carry the next request."""
        self._waiter = None
        self._parser = None
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection's state is unknown
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._waiter.set_exception(PushHttpError(f"not an HTTP/1.1 answer: {exc}"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._head_done = self._status >= 200

    def on_body(self, body: bytes) -> None:
        if len(self._body) < MAX_ANSWER_BYTES:
            self._body += body[:MAX_ANSWER_BYTES - len(self._body)]

    def on_message_complete(self) -> None:
        if self._status < 200:  # 1xx: the real answer follows
            return
        self.keep_alive = bool(self._parser.should_keep_alive())
        self._finish()

    def _finish(self) -> None:
        assert self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result(Answer(self._status, self._retry_after, bytes(self._body)))


class PushClient:
    """POSTs to push services. `close` closes every connection; the pool holds at most
    `max_idle` idle connections per origin."""

    def __init__(self, context: ssl.SSLContext, *, timeout: float, idle_seconds: float = 60.0,
                 max_idle: int = 100) -> None:
        self._context = context
        self._timeout = timeout
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}

    async def post(self, host: str, port: int, addresses: Sequence[str], request: bytes) -> Answer:
        """Send `request` (a whole HTTP/1.1 request, see `post_request`) to `host:port`, on an
        idle connection or a new one to the first of `addresses` that connects."""
        origin = (host, port)
        connection = self._take_idle(origin)
        try:
            async with asyncio.timeout(self._timeout):
                if connection is None:
                    connection = await self._connect(host, port, addresses)
                answer = await connection.send(request)
        except PushHttpError:
            if connection is not None:
                connection.close()
            raise
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            if connection is not None:
                connection.close()
            raise PushHttpError(repr(exc)) from exc
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        connection.done()
        if connection.keep_alive and not connection.closed:
            idle = self._idle.setdefault(origin, deque())
            if len(idle) < self._max_idle:
                idle.append(connection)
            else:
                connection.close()
        else:
            connection.close()
        return answer

    def _take_idle(self, origin: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely closed by now
            if not connection.closed and now - connection.idle_since < self._idle_seconds:
                return connection
            connection.close()
        return None

    async def _connect(self, host: str, port: int, addresses: Sequence[str]) -> _Connection:
        loop = asyncio.get_running_loop()
        failure: Exception = PushHttpError(f"no address to connect to for {host}")
        for address in addresses:
            try:
                _transport, connection = await loop.create_connection(
                    _Connection, address, port, ssl=self._context, server_hostname=host)
            except (OSError, ssl.SSLError) as exc:
                failure = exc
                continue
            return connection
        raise failure

    def sweep(self) -> None:
        """Close connections idle longer than `idle_seconds`."""
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            keep = deque(c for c in idle if not c.closed and now - c.idle_since < self._idle_seconds)
            for connection in idle:
                if connection not in keep:
                    connection.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    async def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def post_request(host_header: str, target: str, headers: Sequence[tuple[str, str]],
                 body: bytes) -> bytes:
    """The bytes of `POST target` with `headers` and `body`. Raises ValueError when the target
    or a header would not be one token of the request (a space, a control character)."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}", *(f"{n}: {v}" for n, v in headers),
             f"Content-Length: {len(body)}", "", ""]
    head = "\r\n".join(lines)
    if not _plain(target) or not all(_plain(v, space=True) for _, v in headers):
        raise ValueError(f"cannot send to {target!r}: a space or control character")
    return head.encode("ascii") + body


def _plain(text: str, space: bool = False) -> bool:
    return text.isascii() and text.isprintable() and (space or " " not in text)
