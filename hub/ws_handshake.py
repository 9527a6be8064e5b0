"""The opening handshake of `/ws` (protocol §4.1): the upgrade request's path and Origin decide
between 101 and a plain HTTP refusal (404 another path, 400 more than one Origin, 403 an origin
not allowed). websockets' sans-I/O server validates the rest of the request. Pure but for the
rejection metric: the caller writes the answer and closes the transport when refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

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
