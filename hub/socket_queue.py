"""How much of what was written to a TCP transport its peer has not acknowledged yet: the
transport's own buffer and the kernel's send queue (Linux's TIOCOUTQ; elsewhere the buffer only).
Used to tell a peer that has read everything from one that still leaves output unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios


def unsent(transport: asyncio.Transport) -> int:
    """Bytes written to `transport` that the peer has not acknowledged: the transport's buffer
    and the kernel's send queue (where the platform tells it)."""
    count = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            count += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return count


class Linger:
    """The timer of a closing socket: drops the transport once the peer has acknowledged every
    byte written (the close frame included), checked every `grace` seconds, or after `timeout`
    for a peer that still leaves output unread (a slow reader gets its close frame after what
    is already in its socket buffer)."""

    __slots__ = ("_grace", "_handle", "_since", "_timeout", "_transport")

    def __init__(self, transport: asyncio.Transport, grace: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._transport = transport
        self._grace = grace
        self._timeout = timeout
        self._since = loop.time()
        self._handle = loop.call_later(grace, self._check)

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if unsent(self._transport) and loop.time() - self._since < self._timeout:
            self._handle = loop.call_later(self._grace, self._check)
        else:
            self._transport.abort()


class WriteFlow(asyncio.Protocol):
    """Flow control of a socket whose transport buffer is its outbound queue (the `Outlet` side
    of hub.connection): `buffered()` is that queue's size and `drain()` waits while the
    transport has paused writing. The subclass sets both slots in its `__init__` and calls
    `resume_writing()` when the connection is lost."""

    __slots__ = ("_transport", "_writable")
    _transport: asyncio.Transport | None
    _writable: asyncio.Future[None] | None

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def buffered(self) -> int:
        assert self._transport is not None
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        if self._writable is not None:
            await asyncio.shield(self._writable)
