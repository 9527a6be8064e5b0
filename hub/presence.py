"""Presence (protocol §11): who has a connection open on any process of the deployment.

The registry tells `Presence` when a user's first connection on this process opens
(`arrived`) and when their last one here closes (`left`); a store shared by every process
(`PresenceStore`: Redis, or memory for a hub of one process) counts the processes holding each
user and remembers which users were last announced online, so that:
- a change is announced once, by one process, whatever the number of devices and processes;
- going offline waits `grace` seconds and is announced only if the user is still offline then,
  so a reconnect within the grace announces nothing at all (a state is never announced twice);
- a process that dies without a word stops heartbeating; another one's heartbeat sweeps it out
  of the store and announces its users offline (see hub/presence_redis.py).
Announcements go to listeners (a feature decides who hears of them, e.g. a chat's members).

One worker task does all of it, in rounds: the changes queued since the last round reach the
store in one call per `BATCH`, in the order they happened here, at least `ROUND_SECONDS` after
the previous round (`BUSY_ROUND_SECONDS` after a round of `BUSY_CHANGES` or more: a reconnect
storm), and listeners hear of a round's arrivals at once, so a member hears of every co-member
of a round in one message. The users whose grace ended settle likewise, in rounds of their own
at least `ROUND_SECONDS` apart, whatever the changes' pace; the grace counts from each user's
leaving. So online is announced within `BUSY_ROUND_SECONDS` of the arrival and offline within
the longer of the grace and `BUSY_ROUND_SECONDS`, plus `ROUND_SECONDS` (each plus the work).
A reconnect storm of thousands of users is then a few dozen store calls and announcements, not
thousands, and its members get one write for the co-members arriving within a second rather
than one each. A user waiting out the grace costs one dict entry (no task, no timer of their
own).

The process also remembers which users the store last heard it hold (`audience`): a user held
by this process alone can be sent a signal here, without the broker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence

from hub.metrics import Metrics

log = logging.getLogger("hub.presence")
Listener = Callable[[list[int], bool], Awaitable[None]]
BATCH = 1000  # changes (or settles) per store call
ROUND_SECONDS = 0.1  # a round starts at least this long after the previous one
BUSY_CHANGES = 100  # a round that records this many changes or more is busy...
BUSY_ROUND_SECONDS = 1.0  # ...and the next one starts at least this long after it


class PresenceStore(ABC):
    """Deployment-wide presence state. Each call is one atomic step (one Redis script call)."""

    @abstractmethod
    async def apply(self, changes: Sequence[tuple[bool, int]]) -> list[bool]:
        """(arriving, user id) changes of this process, in order. For each: arriving, True when
        the user is to be announced online; leaving, True when no process holds them now."""

    @abstractmethod
    async def settle_many(self, user_ids: Sequence[int]) -> list[int]:
        """After their grace: those still offline who were announced online (the caller
        announces them offline; exactly one caller gets each)."""

    async def arrive(self, user_id: int) -> bool:
        """This process now holds the user; True when they are to be announced online."""
        return (await self.apply([(True, user_id)]))[0]

    async def leave(self, user_id: int) -> bool:
        """This process no longer holds the user; True when no process does."""
        return (await self.apply([(False, user_id)]))[0]

    async def settle(self, user_id: int) -> bool:
        return bool(await self.settle_many([user_id]))

    @abstractmethod
    async def holders(self, user_ids: Iterable[int]) -> dict[int, int]:
        """The online users among these -> how many processes hold each."""

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """Which of these users are online."""
        return set(await self.holders(user_ids))

    @abstractmethod
    async def heartbeat(self, local_users: Iterable[int]) -> tuple[list[int], list[int], int]:
        """Prove this process alive and sweep out dead ones: (users to announce offline, users
        to announce online again because this process had been swept, users online)."""

    @abstractmethod
    async def close(self) -> list[int]:
        """Leave the deployment (a graceful stop): the users to announce offline."""


class MemoryPresence(PresenceStore):
    """The embedded store: one process is the whole deployment."""

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._shown: set[int] = set()

    async def apply(self, changes: Sequence[tuple[bool, int]]) -> list[bool]:
        results = []
        for arriving, user_id in changes:
            if arriving:
                self._held.add(user_id)
                results.append(user_id not in self._shown)
                self._shown.add(user_id)
            else:
                self._held.discard(user_id)
                results.append(True)
        return results

    async def settle_many(self, user_ids: Sequence[int]) -> list[int]:
        gone = [u for u in user_ids if u not in self._held and u in self._shown]
        self._shown.difference_update(gone)
        return gone

    async def holders(self, user_ids: Iterable[int]) -> dict[int, int]:
        return {user_id: 1 for user_id in user_ids if user_id in self._held}

    async def heartbeat(self, local_users: Iterable[int]) -> tuple[list[int], list[int], int]:
        return [], [], len(self._held)

    async def close(self) -> list[int]:
        gone = sorted(self._shown)
        self._held.clear()
        self._shown.clear()
        return gone


class Presence:
    """This process's side of presence; `step` is its heartbeat loop."""

    def __init__(self, store: PresenceStore, metrics: Metrics, grace: float) -> None:
        self._store = store
        self._metrics = metrics
        self._grace = grace
        self._listeners: list[Listener] = []
        self._local: set[int] = set()  # users with a connection on this process
        self._work: list[tuple[bool, int, float]] = []  # (arriving, user, when): not yet stored
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._due: dict[int, float] = {}  # user -> when their grace ends (in that order)
        self._closed = False
        self._retry: set[int] = set()  # users whose change the store missed (Redis away)
        self._recorded: set[int] = set()  # users the store last heard this process hold

    def listen(self, listener: Listener) -> None:
        """Call `listener(user_ids, online)` on every batch of announced changes."""
        self._listeners.append(listener)

    async def online(self, user_ids: Iterable[int]) -> list[int]:
        """The online users among these, ascending."""
        return sorted(await self._store.online(user_ids))

    async def audience(self, user_ids: Iterable[int]) -> tuple[set[int], set[int]]:
        """(the online users among these, those of them held by this process alone). A signal
        to one of the latter needs no broker: every connection of theirs is here (a connection
        opening elsewhere meanwhile misses it, as it misses one published just before it
        subscribed)."""
        holders = await self._store.holders(user_ids)
        recorded = self._recorded
        return set(holders), {user_id for user_id, count in holders.items()
                              if count == 1 and user_id in recorded}

    def arrived(self, user_id: int) -> None:
        """The user's first connection on this process opened (never blocks)."""
        self._local.add(user_id)
        self._queue(True, user_id)

    def left(self, user_id: int) -> None:
        """The user's last connection on this process closed (never blocks)."""
        self._local.discard(user_id)
        self._queue(False, user_id)

    def _queue(self, arriving: bool, user_id: int) -> None:
        if self._closed:  # shutting down: `close` withdraws every user of this process at once
            return
        self._work.append((arriving, user_id, time.monotonic()))
        self._wake.set()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="presence")

    async def _run(self) -> None:
        recorded = settled = 0.0  # when the last round of changes, of settles started
        pause = ROUND_SECONDS  # the least time from that round of changes to the next
        while True:
            now = time.monotonic()
            record_at = recorded + pause if self._work else math.inf
            settle_at = (max(next(iter(self._due.values())), settled + ROUND_SECONDS)
                         if self._due else math.inf)
            wake_at = min(record_at, settle_at)
            if wake_at > now:
                if self._work:  # the next round's time is set: more changes need not wake us
                    await asyncio.sleep(wake_at - now)
                    continue
                self._wake.clear()
                try:
                    async with asyncio.timeout(None if settle_at == math.inf else wake_at - now):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            if record_at <= now:
                recorded = now
                work, self._work = self._work, []
                pause = BUSY_ROUND_SECONDS if len(work) >= BUSY_CHANGES else ROUND_SECONDS
                await self._apply(work)
            now = time.monotonic()
            if settle_at <= now:
                settled = now
                due: list[int] = []
                for user_id, deadline in self._due.items():
                    if deadline > now:
                        break
                    due.append(user_id)
                for user_id in due:
                    del self._due[user_id]
                await self._settle(due)

    async def _apply(self, work: list[tuple[bool, int, float]]) -> None:
        """Record a round's changes (BATCH per store call) and announce who came online, at
        once: a member hears of every co-member of the round in one message. A user nobody
        holds any more is due to settle `grace` seconds after they left (`_due` stays in
        deadline order: changes are queued in the order they happen)."""
        online: list[int] = []
        due = self._due
        for start in range(0, len(work), BATCH):
            batch = work[start:start + BATCH]
            try:
                results = await self._store.apply([(arriving, user) for arriving, user, _ in batch])
            except Exception as exc:
                log.warning("presence of %d users not recorded (%s); the next heartbeat retries",
                            len({user_id for _, user_id, _ in batch}), exc)
                self._retry.update(user_id for _, user_id, _ in batch)
                continue
            for (arriving, user_id, when), result in zip(batch, results, strict=True):
                if arriving:
                    self._recorded.add(user_id)
                    if result:
                        online.append(user_id)
                else:
                    self._recorded.discard(user_id)
                    if result:
                        due.pop(user_id, None)  # left again: the grace counts from now
                        due[user_id] = when + self._grace
        await self._announce(online, True)

    async def _settle(self, user_ids: list[int]) -> None:
        """Settle the users whose grace ended (BATCH per store call); announce them at once."""
        offline: list[int] = []
        for start in range(0, len(user_ids), BATCH):
            chunk = user_ids[start:start + BATCH]
            try:
                offline += await self._store.settle_many(chunk)
            except Exception as exc:  # their grace entries stay in the store: a heartbeat settles
                log.warning("presence of %d users not settled (%s)", len(chunk), exc)
        await self._announce(offline, False)

    async def _announce(self, user_ids: list[int], online: bool) -> None:
        if not user_ids:
            return
        for listener in self._listeners:
            try:
                await listener(user_ids, online)
            except Exception:
                log.exception("a presence listener failed for %d users", len(user_ids))

    async def start(self) -> None:
        """The first heartbeat, before the first socket (a failure is logged; the loop retries),
        and the one worker task (sockets add no task of their own)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="presence")
        try:
            await self.step()
        except Exception as exc:
            log.warning("presence heartbeat failed at start (%s); the loop retries", exc)

    async def step(self) -> None:
        """The heartbeat (a loop step): keep this process in the deployment, sweep dead ones."""
        offline, again, count = await self._store.heartbeat(sorted(self._local))
        retry, self._retry = self._retry, set()
        for user_id in sorted(retry):  # whatever the user's state here is now
            self._queue(user_id in self._local, user_id)
        self._metrics.presence_online.set(count)
        await self._announce(offline, False)
        await self._announce(again, True)

    async def close(self) -> None:
        """A graceful stop: this process's users leave now (announced offline if no other
        process holds them)."""
        self._closed = True
        self._recorded.clear()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        due, self._due = list(self._due), {}
        await self._settle(due)  # not left for the sweep to find
        try:
            await self._announce(await self._store.close(), False)
        except Exception:
            log.warning("presence not withdrawn at shutdown", exc_info=True)
