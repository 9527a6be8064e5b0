"""The event of the parse feature (protocol §5, §7), declared once: `ParseRequests` emits it, the
AsyncAPI document describes it, the browser client's name is compared with it by a test."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from hub.events import EventType


class ParseCompleted(BaseModel):
    """A parse request became final; `title` is null on failure, `error` on success."""

    request_id: int
    url: str
    status: Literal["success", "failure"]
    title: str | None
    error: str | None


PARSE_COMPLETED = EventType("parse.completed", ParseCompleted, "the user who asked")
