"""The application frames of `/ws` (protocol §4): what a client's message may say and what the
hub answers, as plain values. Pure: no socket, no clock, no I/O; `hub.ws_socket` acts on them.

Client messages are JSON objects (`auth` first, then `ping` or `refresh`); a text message must
be UTF-8 (`InvalidText` otherwise, closed with 1007). A malformed `auth` or `refresh` frame
gives the reason the socket closes with (4001), never an exception.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from hub.connection import text_frame, welcome_object
from hub.db import rfc3339

PONG = text_frame(b'{"type":"pong"}')
BAD_FRAME = text_frame(orjson.dumps({
    "type": "error", "code": "bad_frame",
    "detail": "expected {\"type\": \"ping\"} or {\"type\": \"refresh\", \"token\": ...}",
}))


class InvalidText(ValueError):
    """A text message that is not UTF-8."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A well-formed first frame: the token, and where to resume from when given."""

    token: str
    last_event_id: int | None
    epoch: str | None


def parse(opcode: Opcode, data: bytes) -> Any:
    """The JSON value of a client message, None when it is not JSON; raises InvalidText."""
    if opcode is Opcode.TEXT:
        try:
            data.decode()
        except UnicodeDecodeError:
            raise InvalidText("invalid UTF-8") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def auth_request(frame: Any) -> AuthRequest | str:
    """The first frame as an `AuthRequest`, or why it is refused (the close reason)."""
    if not isinstance(frame, dict) or frame.get("type") != "auth":
        return "the first frame must be {\"type\": \"auth\", \"token\": ...}"
    token, last_id, epoch = frame.get("token"), frame.get("last_event_id"), frame.get("epoch")
    if not isinstance(token, str):
        return "auth frame without a token"
    if last_id is not None and (isinstance(last_id, bool) or not isinstance(last_id, int) or last_id < 0):
        return "last_event_id must be a non-negative integer"
    if epoch is not None and not isinstance(epoch, str):
        return "epoch must be a string"
    return AuthRequest(token, last_id, epoch)


def welcome(user_id: int, epoch: str, last_event_id: int, recovered: bool) -> bytes:
    return text_frame(orjson.dumps(welcome_object(user_id, epoch, last_event_id, recovered)))


def refreshed(expires_at: float) -> bytes:
    moment = dt.datetime.fromtimestamp(expires_at, dt.UTC)
    return text_frame(orjson.dumps({"type": "refreshed", "expires_at": rfc3339(moment)}))


def error(code: str, detail: str) -> bytes:
    """An `error` frame (a feature's client frame refused: `forbidden`, `bad_frame`)."""
    return text_frame(orjson.dumps({"type": "error", "code": code, "detail": detail}))


class Fragments:
    """Joins a fragmented client message; holds as many fragments as `FrameBudget` lets through."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: tuple[Opcode, list[bytes]] | None = None

    def message(self, frame: Frame) -> tuple[Opcode, bytes] | None:
        """The whole message a data frame completes, None while one is incomplete (or for a
        continuation of nothing, which websockets already refuses)."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                return opcode, bytes(frame.data)
            self._parts = (opcode, [bytes(frame.data)])
        elif opcode is Opcode.CONT and self._parts is not None:
            self._parts[1].append(bytes(frame.data))
            if frame.fin:
                (opcode, parts), self._parts = self._parts, None
                return opcode, b"".join(parts)
        return None
