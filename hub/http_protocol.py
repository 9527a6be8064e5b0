"""The hub's HTTP/1.1 connections: uvicorn's httptools protocol with each request head bounded.

uvicorn puts no bound on the time or the bytes a client takes to send a request's head (the
request line and the headers), so silent or dripping connections pile up until the process runs
out of file descriptors, and an endless header grows in memory. Here, from a connection's first
moment and from the first byte of each next request on a kept-alive connection, the head must be
complete within `HTTP_HEADER_TIMEOUT` seconds (one deadline for the whole head, not reset by
each byte) and `HTTP_MAX_HEADER_BYTES` bytes, else the connection is answered 408 or 431 and
closed. Between requests uvicorn's keep-alive timeout applies, as before.

A long-lived response (the event stream, hub/event_stream.py) reaches its connection through
the request's scope (`scope[CONTROL]`, this protocol): it is told of the server's graceful
shutdown (`on_shutdown`, so it can say goodbye before uvicorn waits for it) and of the peer's
leaving (`on_lost`, without a task waiting on `receive`), and may `abort` the connection of a
peer that stopped reading. On this protocol the stream goes further: once its head is sent, it
takes the connection over (`hand_off`) and the request's task ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from hub.errors import ApiError, HeadersTooLarge, RequestTimeout
from hub.settings import Settings

CONTROL = "hub.connection"  # the scope key under which a request finds its `BoundedHeadProtocol`


def http_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """uvicorn's `http` option for these settings."""
    return type("HubHttpProtocol", (BoundedHeadProtocol,), {
        "header_timeout": settings.http_header_timeout,
        "max_header_bytes": settings.http_max_header_bytes,
    })


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request's head is bounded in time and bytes. The byte
    bound is checked per read, so a head may overshoot it by less than one read before it is
    refused (a pipelined request's head that starts within a read counts from the next one)."""

    header_timeout = 10.0
    max_header_bytes = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0  # bytes of the head being read; None between heads
        self._head_timer: asyncio.TimerHandle | None = None
        self.on_shutdown: Callable[[], None] | None = None  # set by a long-lived response
        self.on_lost: Callable[[], None] | None = None  # likewise: the peer is gone
        self.shutting_down = False  # the server's graceful shutdown has begun

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        lost, self.on_lost = self.on_lost, None
        super().connection_lost(exc)
        if lost is not None:
            lost()

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is None:
            super().data_received(data)
            return
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        super().data_received(data[:room])  # what may still be the end of the head
        if self._head_bytes is not None:
            self._refuse(HeadersTooLarge(f"request headers are over {self.max_header_bytes} bytes"))
        elif self.transport.get_protocol() is self and not self.transport.is_closing():
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_bytes is None:
            self._head_bytes = 0
        if self._head_timer is None:  # the first byte of a next request on a kept-alive connection
            self._arm_head_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0  # whatever comes next starts the next request's head

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._cancel_head_timer()
        self.scope[CONTROL] = self  # type: ignore[literal-required]
        self.on_shutdown = self.on_lost = None
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        """uvicorn's hand-off to the WebSocket protocol; then this protocol lets go of its parser
        and the request (each refers back to it: a cycle only the garbage collector would
        break, so every upgraded socket's HTTP protocol, 1-2 KiB, lingered until a collection)."""
        super().handle_websocket_upgrade()
        self.parser = self.scope = self.headers = None  # type: ignore[assignment]

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: a long-lived response ends itself first."""
        self.shutting_down = True
        hook, self.on_shutdown = self.on_shutdown, None
        if hook is not None:
            hook()
        super().shutdown()

    def response_chunked(self) -> bool:
        """Whether the current response's body goes in chunks (decided when its head was sent)."""
        return bool(self.cycle is not None and self.cycle.chunked_encoding)

    def hand_off(self, protocol: asyncio.Protocol) -> bool:
        """Give the connection to `protocol` after the current response's head (a long-lived
        response that writes by itself, hub/stream_socket.py), as uvicorn does with an upgrade:
        the request's task may end (uvicorn counts the response complete), this protocol leaves
        the server's connections and parses nothing more. False when the peer is already gone."""
        cycle, transport = self.cycle, self.transport
        if cycle is None or cycle.disconnected or transport.is_closing():
            return False
        cycle.response_complete = True
        cycle.keep_alive = False
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        self._cancel_head_timer()
        self.on_shutdown = self.on_lost = None
        self.pipeline.clear()
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        if not transport.is_reading():
            transport.resume_reading()  # to learn when the peer leaves
        return True

    @contextlib.contextmanager
    def one_write(self) -> Iterator[None]:
        """The current response's writes, its head's and its body's, as one `send()` at the end
        of the block (uvicorn writes the head by itself: two system calls and two packets for
        a small answer). The block must not outlive the response."""
        cycle = self.cycle
        if cycle is None:
            yield
            return
        transport = cycle.transport
        gathered = _Gathered(transport)
        cycle.transport = gathered  # type: ignore[assignment]
        try:
            yield
        finally:
            cycle.transport = transport
            gathered.flush()

    def abort(self) -> None:
        """Drop the connection now, whatever is still unsent (a peer that stopped reading)."""
        self.transport.abort()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(RequestTimeout(f"request headers took over {self.header_timeout:g} s"))
        else:  # nothing was asked: nobody to answer
            self.transport.close()

    def _refuse(self, error: ApiError) -> None:
        """Answer in the contract's error shape and close; nothing more of the request is read."""
        self._cancel_head_timer()
        self._head_bytes = None
        body = orjson.dumps(error.body())
        self.transport.write(STATUS_LINE[error.status] + b"content-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


class _Gathered:
    """A transport whose writes wait for `flush` (or a `close`, which flushes first)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def flush(self) -> None:
        if self._parts:
            data, self._parts = b"".join(self._parts), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
