"""The WebSocket endpoint `/ws` (protocol §4): what every socket of a process shares.

uvicorn parses the HTTP request and hands the upgraded socket to `HubSocket`, an asyncio
protocol (the server's `ws` class), so a socket costs a few objects and no task while it idles,
and an event's frame, encoded once for all its recipients, is written straight to each socket
from the broker's read callback.

Handshake (origin check) → first-frame auth (10 s) → register → welcome (+ replay on resume) →
client frames and events → close, unregistering at once. The lifecycle lives in one place,
`hub.ws_socket`; around it, each with its own contract:
- `hub.ws_handshake`: the upgrade request (path, Origin) answered, a plain one by the hub's own
  code, anything else by websockets' sans-I/O server;
- `hub.ws_tasks`: the socket's tasks (its start, refreshes, features' frames);
- `hub.stream_reads`: the stream heads and missed events sockets read, merged into few queries;
- `hub.ws_budget`: the frame budget (rate, burst, fragments) applied before any frame is parsed;
- `hub.ws_frames`: the application frames, parsed and built as plain values;
- `hub.close_codes`: every close code, with what a client does about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.db import Database
from hub.identity import Authenticator
from hub.metrics import Metrics
from hub.registry import Registry
from hub.settings import Settings, normalize_origin
from hub.signals import FrameHandler
from hub.stream_reads import StreamReads
from hub.ws_handshake import PATH
from hub.ws_keepalive import KeepaliveWheel
from hub.ws_socket import HubSocket

__all__ = ["PATH", "WebSocketApi"]

CLOSE_TIMEOUT = 5.0


class WebSocketApi:
    """What every socket of this process shares; `protocol` is uvicorn's `ws` factory."""

    def __init__(self, settings: Settings, db: Database, registry: Registry,
                 authenticator: Authenticator, metrics: Metrics,
                 client_frames: Mapping[str, FrameHandler] | None = None,
                 reads: StreamReads | None = None) -> None:
        self.settings = settings
        self.client_frames = dict(client_frames or {})  # features' frames (`typing`)
        self.db = db
        self.reads = reads if reads is not None else StreamReads(db)  # heads and gap fills, merged
        self.registry = registry
        self.auth = authenticator
        self.metrics = metrics
        self.origins = frozenset(settings.allowed_origins)
        self.keepalive = KeepaliveWheel(settings.ws_ping_interval)  # every socket's pings
        # a slow reader gets its close frame after what is already in its socket buffer: give
        # it as long as the keepalive gives a silent peer before dropping it
        self.close_timeout = max(CLOSE_TIMEOUT, 2 * settings.ws_ping_interval)

    def protocol(self, config: Any, server_state: Any, app_state: Any) -> HubSocket:
        """Called by uvicorn for each upgraded connection (its `ws` option)."""
        return HubSocket(self, server_state.connections)

    def origin_allowed(self, origin: str | None) -> bool:
        return not self.origins or origin is None or normalize_origin(origin) in self.origins

