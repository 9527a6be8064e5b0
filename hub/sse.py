"""The Server-Sent Events messages of the event stream (protocol §12, hub/event_stream.py):
events (the stream's encoding, `SseEvents`, after the outlet's `id: <epoch>:`), signals (no `id`
line) and the stream's own messages (`welcome`, `error`)."""

from __future__ import annotations

import orjson

from hub.connection import (
    AuthEnded,
    ConnectionEnded,
    SessionRevoked,
    SlowConsumer,
    StreamGap,
    TokenExpired,
)

PING = b": ping\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
    (b"x-content-type-options", b"nosniff"),
    (b"connection", b"close"),  # the stream's end is the connection's
]


class SseEvents:
    """The stream's encoding of an event, shared by every stream connection: everything of the
    SSE message after `id: <epoch>:` (which the outlet writes, the epoch being per user)."""

    __slots__ = ()

    def encode(self, payload: bytes) -> bytes:
        # payloads start {"id":<id>,"name":"<name>", with names of ^[a-z][a-z0-9_.:-]*$
        comma = payload.index(b",", 6)
        name_at = comma + 9
        name = payload[name_at:payload.index(b'"', name_at)]
        payload = _one_line(payload)
        return b"%s\nevent: %s\ndata: %s\n\n" % (payload[6:comma], name, payload)

    def encode_signal(self, payload: bytes) -> bytes:
        """A whole SSE message without an `id` line (protocol §12), so that a client's
        Last-Event-ID stays the last event's: `event: <type>`, `data: <the signal's JSON>`."""
        # signal payloads start {"type":"<type>", (hub.signals.signal_payload)
        name_at = len(b'{"type":"')
        name = payload[name_at:payload.index(b'"', name_at)]
        return b"event: %s\ndata: %s\n\n" % (name, _one_line(payload))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SseEvents)

    def __hash__(self) -> int:
        return hash(SseEvents)


SSE_EVENTS = SseEvents()


def _one_line(payload: bytes) -> bytes:
    """JSON on one line: a raw line break can only be whitespace between tokens."""
    if b"\n" in payload or b"\r" in payload:
        payload = payload.replace(b"\r", b" ").replace(b"\n", b" ")
    return payload


def sse_message(event: str, data: object, event_id: str | None = None) -> bytes:
    """One SSE message of `event` with `data` as JSON (and an `id` line when given)."""
    head = b"id: %s\n" % event_id.encode() if event_id is not None else b""
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


def end_message(code: str, detail: str) -> bytes:
    return sse_message("error", {"code": code, "detail": detail})


def ending(reason: ConnectionEnded) -> tuple[str, str]:
    """The error event's code and detail for why a connection ended."""
    if isinstance(reason, SlowConsumer):
        return "slow_consumer", "the client did not take its events fast enough: reconnect and resume"
    if isinstance(reason, TokenExpired):
        return "token_expired", "the access token expired: refresh it and reconnect"
    if isinstance(reason, SessionRevoked):
        return "session_revoked", "the session was ended (logout, password change): sign in again"
    if isinstance(reason, AuthEnded):
        return "token_expired", str(reason)
    if isinstance(reason, StreamGap):
        return "history_gone", "missed events are no longer retained: reconnect"
    return "internal", "internal error: reconnect"
