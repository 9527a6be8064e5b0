"""What a feature tells the hub about pushing its events (protocol §13): the words of the
notification, its `Topic`, and whether the user has seen the event some other way.

A feature hands `PushRule`s to the composition root in its `Feature(push_rules=...)`; an event
name in `PUSH_EVENTS` without a rule is pushed with its name as the title. When the user sees a
topic elsewhere (reads the chat), the feature calls `close_pushed` in its transaction, and the
notifications of that topic that were pushed are closed on the user's devices.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from hub import push_store

MAX_PAYLOAD_BYTES = 3000  # what every push service accepts once encrypted (RFC 8291 allows ~3993)
MAX_TITLE = 100
MAX_BODY_BYTES = 1000  # leaves the rest of the payload to the event
ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Notice:
    """The visible part of a push. `topic` (≤ 32 characters of the base64url alphabet) makes a
    newer push replace an older one with the same topic on the device."""

    title: str
    body: str
    topic: str | None = None
    position: int | None = None  # with a topic: the `close_pushed` position that closes it


Describe = Callable[[dict[str, Any]], Notice]
# Whether `user_id` has already seen the event with this data (e.g. read the chat message);
# called inside the hub's transaction, so it only reads.
Seen = Callable[[AsyncSession, int, dict[str, Any]], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class PushRule:
    describe: Describe
    seen: Seen | None = None


async def close_pushed(session: AsyncSession, user_id: int, topic: str, position: int) -> int:
    """The user has seen `topic` up to `position` (e.g. read the chat up to a message): each of
    their devices that was pushed a notice of that topic at or below it gets a small push
    (`Urgency: low`, same `Topic`, payload `{"close": topic}`) on which /sw.js closes the
    notifications tagged `topic`. Only writes, in the caller's transaction; returns how many
    close pushes were decided (0 when nothing was pushed). Needless while push is off."""
    return await push_store.close_notices(session, user_id, topic, position, close_payload(topic))


def close_payload(topic: str) -> bytes:
    return orjson.dumps({"close": topic})


def default_notice(name: str) -> Notice:
    return Notice(title=name, body="")


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[:max(0, limit - 1)] + ELLIPSIS


def push_payload(notice: Notice, event_id: int, name: str, data_json: str, created_at: str) -> bytes:
    """`{"title", "body", "event"}` as JSON of at most `MAX_PAYLOAD_BYTES`, the event's data
    as stored (byte for byte) when it fits. The title and body are first held to their own
    limits (100 characters, 1,000 bytes); then the longest strings of the event's data are
    shortened; an event still too large keeps its id, name and time without its data; last,
    the body is cut."""
    title = shorten(notice.title, MAX_TITLE)
    body = _shorten_utf8(notice.body, MAX_BODY_BYTES)
    event: dict[str, Any] = {"id": event_id, "name": name, "data": orjson.Fragment(data_json),
                             "created_at": created_at}

    def encode() -> bytes:
        return orjson.dumps({"title": title, "body": body, "event": event})

    encoded = encode()
    if len(encoded) <= MAX_PAYLOAD_BYTES:
        return encoded
    data = orjson.loads(data_json)
    event["data"] = data
    if isinstance(data, dict):
        for key in sorted((k for k, v in data.items() if isinstance(v, str)),
                          key=lambda k: -len(orjson.dumps(data[k]))):
            data[key] = _cut_bytes(data[key], len(encoded) - MAX_PAYLOAD_BYTES)
            encoded = encode()
            if len(encoded) <= MAX_PAYLOAD_BYTES:
                return encoded
    if len(encoded) > MAX_PAYLOAD_BYTES:
        event["data"] = {}
        encoded = encode()
    if len(encoded) > MAX_PAYLOAD_BYTES:
        body = _cut_bytes(body, len(encoded) - MAX_PAYLOAD_BYTES)
        encoded = encode()
    return encoded


def _shorten_utf8(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit - len(ELLIPSIS.encode())].decode(errors="ignore") + ELLIPSIS


def _cut_bytes(text: str, excess: int) -> str:
    """`text` with at least `excess` bytes of its JSON form removed (and an ellipsis added)."""
    size = len(orjson.dumps(text))
    keep = len(text)
    while keep > 0 and len(orjson.dumps(text[:keep] + ELLIPSIS)) > size - excess:
        keep = max(0, keep - max(1, (len(orjson.dumps(text[:keep])) - (size - excess)) // 4))
    return text[:keep] + ELLIPSIS if keep < len(text) else text
