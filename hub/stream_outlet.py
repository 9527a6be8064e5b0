"""The event stream's response through the ASGI cycle (hub/event_stream.py): for a `HEAD`, and
on a server other than the hub's own HTTP protocol, where the stream cannot take its connection
over (hub/stream_socket.py). A task per stream writes what the connection leaves in a buffer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hub.connection import STREAM, Connection, ConnectionEnded, SlowConsumer
from hub.http_protocol import CONTROL, BoundedHeadProtocol
from hub.sse import HEADERS, PING, end_message, ending

if TYPE_CHECKING:
    from hub.event_stream import EventStreamApi

DRAIN_ABOVE = 64 * 1024  # a replay waits for the writer once this much is pending


class StreamOutlet(Response):
    """One stream's response and its connection's `Outlet`: what the connection writes is kept
    in a buffer that the response's task hands to the server; the buffer counts as unsent while
    the server waits for the peer to read (or when it is over the byte bound at once)."""

    def __init__(self, api: EventStreamApi) -> None:  # no super().__init__: nothing is rendered
        self._api = api
        self._connection: Connection | None = None
        self._chunks: list[bytes] = []
        self._pending = 0
        self._id_prefix = b"id: "
        self._sending = False
        self._finished = False
        self._disconnected = False
        self._wake: asyncio.Future[None] | None = None
        self._flushed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._control: BoundedHeadProtocol | None = None
        self._start: tuple[int, int | None] = (0, None)  # after which id; replay up to

    def begin(self, connection: Connection, id_prefix: bytes, welcome: bytes, after: int,
              replay_to: int | None) -> None:
        """What the response starts with: the welcome event, then from where events follow."""
        self._connection = connection
        self._id_prefix = id_prefix
        self._chunks.append(welcome)
        self._start = (after, replay_to)

    def finish(self) -> None:
        self._finished = True

    # Outlet (hub.connection)

    def write(self, frame: bytes) -> None:
        self._chunks.append(self._id_prefix)
        self._chunks.append(frame)
        self._pending += len(frame)
        self._wakeup()

    def write_signal(self, frame: bytes) -> None:
        self._chunks.append(frame)  # no id line: the client's Last-Event-ID stays an event's
        self._pending += len(frame)
        self._wakeup()

    def buffered(self) -> int:
        if self._sending or self._pending > self._api.settings.ws_queue_max_bytes:
            return self._pending
        return 0

    async def drain(self) -> None:
        while (self._sending or self._pending > DRAIN_ABOVE) and not self._finished:
            if self._flushed is None:
                self._flushed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._flushed)

    def ended(self, reason: ConnectionEnded) -> None:
        if isinstance(reason, SlowConsumer):
            self._api.metrics.slow_consumer_disconnects.labels(STREAM).inc()
        self._end(*ending(reason))

    # the response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api, connection = self._api, self._connection
        assert connection is not None
        loop = asyncio.get_running_loop()
        control = scope.get(CONTROL)
        watcher: asyncio.Task[None] | None = None
        if isinstance(control, BoundedHeadProtocol):
            self._control = control
            control.on_shutdown = self._shutdown
            control.on_lost = self._lost
        else:  # another server: a task waits for the disconnect
            watcher = loop.create_task(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            if not self._finished:
                connection.set_expiry(connection.expires_at)
                connection.start_at(*self._start)
                self._timer = loop.call_later(api.settings.ws_ping_interval, self._ping)
            await self._write_until_finished(send)
            if not self._disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            self._finished = True
            for timer in (self._timer, self._deadline):
                if timer is not None:
                    timer.cancel()
            if self._control is not None:
                self._control.on_shutdown = self._control.on_lost = None
            connection.stop()
            api.registry.unregister(connection)
            self._resolve_flushed()

    async def _write_until_finished(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._chunks and not self._finished:
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            if self._disconnected:
                return
            chunks, self._chunks, self._pending = self._chunks, [], 0
            if chunks:
                self._sending = True
                try:
                    await send({"type": "http.response.body", "body": b"".join(chunks),
                                "more_body": True})
                finally:
                    self._sending = False
                self._resolve_flushed()
            if self._finished and not self._chunks:
                return

    async def _watch(self, receive: Receive) -> None:
        """Wait for the peer to go away (the request has no body to read)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    def _lost(self) -> None:
        self._disconnected = True
        self._finished = True
        if self._connection is not None:
            self._connection.stop()
        self._wakeup()

    def _ping(self) -> None:
        self._chunks.append(PING)
        self._pending += len(PING)
        self._wakeup()
        self._timer = asyncio.get_running_loop().call_later(self._api.settings.ws_ping_interval,
                                                            self._ping)

    def _shutdown(self) -> None:
        self._end("server_restarting", "the server is restarting: reconnect and resume")

    def _end(self, code: str, detail: str) -> None:
        """Send the error event after whatever is pending and end the response; a peer that does
        not take it within the close timeout is dropped."""
        if self._finished:
            return
        self._finished = True
        self._api.metrics.stream_ends.labels(code).inc()
        if self._connection is not None:
            self._connection.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if code == "slow_consumer":  # the client resumes after the last id it did receive
            self._chunks.clear()
        self._chunks.append(end_message(code, detail))
        self._wakeup()
        self._deadline = asyncio.get_running_loop().call_later(self._api.close_timeout, self._abort)

    def _abort(self) -> None:
        self._disconnected = True
        if self._control is not None:
            self._control.abort()
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _resolve_flushed(self) -> None:
        flushed, self._flushed = self._flushed, None
        if flushed is not None and not flushed.done():
            flushed.set_result(None)

