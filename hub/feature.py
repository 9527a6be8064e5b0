"""What a feature hands the composition root: its routes, its background loops, the events it
declares (see `hub.events.EventType`), the client frames it answers on the WebSocket and the
rules for pushing its events (Web Push, protocol §13)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute

from hub.events import EventType
from hub.push_rules import PushRule
from hub.signals import FrameHandler


@dataclass(frozen=True)
class Loop:
    """A background step that the app runs every `interval` seconds under `supervise`."""

    name: str
    step: Callable[[], Awaitable[None]]
    interval: float


@dataclass(frozen=True)
class Feature:
    routes: Sequence[BaseRoute] = ()
    loops: Sequence[Loop] = field(default_factory=tuple)
    client_frames: Mapping[str, FrameHandler] = field(default_factory=dict)
    events: Sequence[EventType[Any]] = ()  # every event the feature emits
    push_rules: Mapping[str, PushRule] = field(default_factory=dict)  # by event name
