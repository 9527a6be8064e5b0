"""The in-process broker: the embedded default, for a hub of one process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hub.broker import Broker, Deliver, ResyncChannels


class MemoryBroker(Broker):
    """Delivers synchronously to this process's subscribers; there is nothing to reconnect."""

    name = "memory"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._channels: set[str] = set()

    async def open(self, deliver: Deliver, on_resync: Callable[[], None],
                   on_resync_channels: ResyncChannels | None = None) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None
        self._channels.clear()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        deliver = self._deliver
        if deliver is None:
            return
        for channel, payload in messages:
            if channel in self._channels:
                deliver(channel, payload)

    async def ping(self) -> None:
        return None
