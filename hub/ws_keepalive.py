"""The keepalive pings of every `/ws` socket (and, on a wheel of its own, every stream) of a
process on one loop timer (a timer wheel).

Every socket is due once per `interval` (its next ping, or its close when the last one is still
unanswered), so a wheel of `SLOTS` buckets turned one slot every `interval / SLOTS` seconds
replaces a timer per socket: a socket waits in the bucket the wheel has just handled, and is
handled again when the wheel comes back to it, between `interval * (SLOTS - 1) / SLOTS` and
`interval` later. A socket costs one dict entry (a timer handle of its own costs about 400
bytes), and the timer only runs while some socket waits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

SLOTS = 10
log = logging.getLogger("hub.ws")


class Due(Protocol):
    def keepalive(self) -> None:
        """Its turn has come: ping, or close when the last ping is unanswered (it may `add`
        itself again)."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class KeepaliveWheel:
    """`add` a socket to have its `keepalive` called about `interval` seconds later, once;
    `remove` it before that to have it never called."""

    __slots__ = ("_buckets", "_handle", "_tick", "_turn", "expiry_horizon")

    def __init__(self, interval: float) -> None:
        self._tick = interval / SLOTS
        # a socket's token-expiry timer is armed once the token expires within two turns (they
        # come at most `interval` apart): its turns watch the expiry until then
        self.expiry_horizon = 2 * interval
        self._buckets: list[dict[Due, None]] = [{} for _ in range(SLOTS)]
        self._turn = 0  # the bucket handled last: where an added socket waits
        self._handle: asyncio.TimerHandle | None = None

    def add(self, socket: Due) -> int:
        """Call `socket.keepalive()` about `interval` seconds from now; returns the bucket
        (what `remove` takes)."""
        turn = self._turn
        self._buckets[turn][socket] = None
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._tick, self._turn_once)
        return turn

    def remove(self, socket: Due, bucket: int) -> None:
        self._buckets[bucket].pop(socket, None)

    def cancel(self, socket: Due, timer: int | Cancellable | None) -> None:
        """Undo what a socket holds as its timer: its bucket here (what `add` returned), or a
        timer of its own."""
        if isinstance(timer, int):
            self.remove(socket, timer)
        elif timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return sum(map(len, self._buckets))

    def _turn_once(self) -> None:
        self._turn = turn = (self._turn + 1) % SLOTS
        due, self._buckets[turn] = self._buckets[turn], {}
        self._handle = None
        for socket in due:
            try:
                socket.keepalive()
            except Exception:
                log.exception("a keepalive failed")
        if self._handle is None and any(self._buckets):
            self._handle = asyncio.get_running_loop().call_later(self._tick, self._turn_once)
