"""The broker boundary: how an event committed by any process reaches the processes holding the
user's sockets.

Guarantees: at most once, in publish order per channel, to every process subscribed at the
moment of the publish. Nothing more: events published while a process is not subscribed
(its connection to the broker is down) are lost to it, which is why `open` takes an
`on_resync` callback, called after every reconnect once every channel is subscribed again, so
the hub re-reads what it may have missed from the event store. A broker that can lose some
channels and keep the others (the Redis Cluster broker: one master failing, one slot moving)
calls `on_resync_channels` with the affected channels instead, when it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence

Deliver = Callable[[str, bytes], None]
ResyncChannels = Callable[[Collection[str]], None]
CHANNEL = "notifications:"


def user_channel(prefix: str, user_id: int) -> str:
    """The channel of a user's live events: `notifications:{user_id}` (after an optional prefix
    that isolates test runs sharing one Redis)."""
    return f"{prefix}{CHANNEL}{user_id}"


class BrokerUnavailable(Exception):
    """The broker could not be reached; the caller leaves the work to the relay."""


class Broker(ABC):
    """One per process. `subscribe`/`unsubscribe` are idempotent per channel; reference counting
    of local sockets is the caller's. `deliver` is called from the broker's listener task and
    must not block."""

    name: str = "broker"

    @abstractmethod
    async def open(self, deliver: Deliver, on_resync: Callable[[], None],
                   on_resync_channels: ResyncChannels | None = None) -> None:
        """Connect and start listening; returns once ready."""

    @abstractmethod
    async def close(self) -> None:
        """Stop listening and release connections."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Returns once messages on `channel` published from now on will be delivered."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    @abstractmethod
    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish (channel, payload) pairs in order; raises BrokerUnavailable on failure."""

    @abstractmethod
    async def ping(self) -> None:
        """Raises BrokerUnavailable when the broker cannot be reached."""

