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
