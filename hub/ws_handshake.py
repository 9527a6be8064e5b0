"""The opening handshake of `/ws` (protocol §4.1): the upgrade request's path and Origin decide
between 101 and a plain HTTP refusal (404 another path, 400 more than one Origin, 403 an origin
not allowed). websockets' sans-I/O server validates the rest of the request. Pure but for the
rejection metric: the caller writes the answer and closes the transport when refused.

A plain upgrade request (what every client library sends: one Upgrade, Connection, key, version
and at most one allowed Origin) is answered by `_plain_accept` with the bytes websockets would
write, at a fraction of its cost; anything else, refusals included, goes to websockets.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from hub.metrics import Metrics

PATH = "/ws"
frames_log = logging.getLogger("hub.ws.frames")  # websockets' own per-connection messages
frames_log.setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What to write back (`answer`), and the open socket's frame protocol when accepted."""

    answer: bytes
    protocol: Protocol | None


def upgrade(data: bytes, max_message_bytes: int, origin_allowed: Callable[[str | None], bool],
            metrics: Metrics) -> Upgrade:
    """Answer the upgrade request in `data` (the first bytes the client sent); an incomplete or
    malformed request gets an empty answer and no protocol."""
    plain = _plain_accept(data, origin_allowed)
    if plain is not None:
        return Upgrade(plain, Protocol(Side.SERVER, state=State.OPEN, max_size=max_message_bytes,
                                       logger=frames_log))
    server = ServerProtocol(max_size=max_message_bytes, logger=frames_log)
    server.receive_data(data)
    request = next((event for event in server.events_received() if isinstance(event, Request)), None)
    if request is None:
        return Upgrade(b"", None)
    origins = request.headers.get_all("Origin")
    if request.path.partition("?")[0] != PATH:
        response = server.reject(404, "Not Found\n")
    elif len(origins) > 1:
        response = server.reject(400, "Bad Request: more than one Origin header\n")
    elif not origin_allowed(origins[0] if origins else None):
        metrics.connections_rejected.labels("origin").inc()
        response = server.reject(403, "Forbidden: origin not allowed\n")
    else:
        response = server.accept(request)
    server.send_response(response)
    answer = b"".join(server.data_to_send())
    if response.status_code != 101:
        return Upgrade(answer, None)
    return Upgrade(answer, Protocol(Side.SERVER, state=State.OPEN, max_size=max_message_bytes,
                                    logger=frames_log))


_WATCHED = {b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version", b"origin"}
_MAX_HEADERS = 128  # websockets' own limit


def _plain_accept(data: bytes, origin_allowed: Callable[[str | None], bool]) -> bytes | None:
    """The 101 answer to a plain upgrade request of `PATH` that websockets would accept, or None
    to leave the request to websockets (anything unusual, and every refusal)."""
    head, end, rest = data.partition(b"\r\n\r\n")
    if not end or rest:
        return None
    lines = head.split(b"\r\n")
    if len(lines) > _MAX_HEADERS + 1:
        return None
    method, _, target = lines[0].partition(b" ")
    target, _, version = target.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or target.partition(b"?")[0] != PATH.encode():
        return None
    found: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        name = name.lower()
        if not colon or name.strip() != name:
            return None
        if name in _WATCHED:
            if name in found:
                return None
            found[name] = value.strip(b" \t")
    key = found.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    tokens = [token.strip(b" \t").lower() for token in found.get(b"connection", b"").split(b",")]
    if (found.get(b"upgrade", b"").lower() != b"websocket" or b"upgrade" not in tokens
            or found.get(b"sec-websocket-version") != b"13"):
        return None
    origin = found.get(b"origin")
    if not origin_allowed(None if origin is None else origin.decode("ascii", "surrogateescape")):
        return None
    return (b"HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
            % (_http_date(int(time.time())), accept_key(key.decode()).encode()))


@functools.lru_cache(maxsize=1)
def _http_date(now: int) -> bytes:
    """The Date header's value, formatted once a second."""
    return email.utils.formatdate(now, usegmt=True).encode()
