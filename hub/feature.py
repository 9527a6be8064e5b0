"""What a feature hands the composition root: its routes, its background loops and the rules
for pushing its events (Web Push, protocol §13)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from starlette.routing import BaseRoute

from hub.push_rules import PushRule


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
    push_rules: Mapping[str, PushRule] = field(default_factory=dict)  # by event name
