"""The signal path (protocol §11): live-only frames to users' open connections, beside the
event stream.

An event is stored, numbered, replayed and delivered exactly once; a signal (presence, typing)
is none of these: it is published on the recipients' channels (`notifications:{user_id}`, the
same broker and the same per-process subscription as events) and written to whichever of their
connections are open right now; one that is missed (no connection, a broker outage, a
reconnect) is gone. Features send signals the way they emit events:

    await signals.send(member_ids, {"type": "typing", "chat_id": 7, "user_id": 3})

Channel payloads tell them apart by their first field: an event's payload starts with
`{"id":`, a signal's with `{"type":` (`is_signal` checks one byte), so the event path pays one
comparison. One signal payload carries every frame of a `send_many` for its recipient, in order,
one JSON object a line (JSON as encoded here holds no raw newline): one PUBLISH per recipient,
not one per frame, and the registry writes them to each socket at once, still one WebSocket
message or SSE event per frame (`signal_frames`). A recipient the caller knows to have every
connection on this process (presence tells, `Presence.audience`) is written to directly, with
no broker in between (`send_many(..., here=...)`). A client frame a feature answers (`typing`)
is a `FrameHandler` it hands the composition root (`Feature.client_frames`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import orjson

from hub.broker import Broker, BrokerUnavailable, user_channel
from hub.metrics import Metrics

log = logging.getLogger("hub.signals")
SIGNAL_PREFIX = b'{"type":'
_SIGNAL_BYTE = SIGNAL_PREFIX[2]  # events' payloads have 'i' ({"id":...) there

# Writes users' signal frames to their connections on this process: {user id: frames}.
LocalSink = Callable[[Mapping[int, list[bytes]]], None]
# A client frame handler: (user id, the frame) -> an error frame's code and detail, or None.
FrameHandler = Callable[[int, Mapping[str, Any]], Awaitable[tuple[str, str] | None]]


def is_signal(payload: bytes) -> bool:
    """Whether a channel payload is a signal (else it is an event)."""
    return len(payload) > 2 and payload[2] == _SIGNAL_BYTE


def signal_frames(payload: bytes) -> list[bytes]:
    """The frames a signal payload carries, in order (one or more)."""
    return payload.split(b"\n")


def signal_payload(frame: Mapping[str, Any]) -> bytes:
    """The channel payload of a signal frame: its JSON, `type` first (what `is_signal` reads)."""
    kind = frame.get("type")
    if not isinstance(kind, str) or kind == "event":
        raise ValueError("a signal frame needs a string type other than 'event'")
    if isinstance(frame, dict) and next(iter(frame)) == "type":  # already in that order
        return orjson.dumps(frame)
    return orjson.dumps({"type": kind, **{k: v for k, v in frame.items() if k != "type"}})


class Signals:
    """Sends signal frames to users' open connections, on every process of the deployment."""

    def __init__(self, broker: Broker, metrics: Metrics, channel_prefix: str,
                 local: LocalSink | None = None) -> None:
        self._broker = broker
        self._metrics = metrics
        self._prefix = channel_prefix
        self._local = local

    async def send(self, user_ids: Iterable[int], frame: Mapping[str, Any]) -> None:
        """One frame to each of these users' connections; best effort, never raises."""
        await self.send_many([(user_ids, frame)])

    async def send_many(self, batch: Sequence[tuple[Iterable[int], Mapping[str, Any]]],
                        here: Collection[int] = ()) -> None:
        """Several (recipients, frame) pairs, each frame encoded once, in one round trip to the
        broker: one message per recipient carrying their frames in the batch's order.
        Recipients in `here` have every connection on this process (the caller knows it from
        presence): their frames are written here, with no broker in between."""
        frames: dict[int, list[bytes]] = {}
        for user_ids, frame in batch:
            payload = signal_payload(frame)
            for user_id in set(user_ids):
                frames.setdefault(user_id, []).append(payload)
        if not frames:
            return
        local = self._local
        if local is not None and here:
            mine = {user_id: frames.pop(user_id) for user_id in [u for u in frames if u in here]}
            local(mine)
            self._metrics.signals_sent.inc(sum(map(len, mine.values())))
            if not frames:
                return
        messages = [(user_channel(self._prefix, user_id), b"\n".join(frames[user_id]))
                    for user_id in sorted(frames)]
        count = sum(map(len, frames.values()))
        try:
            await self._broker.publish(messages)
        except BrokerUnavailable as exc:
            log.info("%d signals lost, the broker is unavailable: %s", count, exc)
            return
        except Exception:
            log.exception("sending %d signals failed", count)
            return
        self._metrics.signals_sent.inc(count)
