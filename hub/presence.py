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
Every store call goes through one ordered worker, so a quick arrive/leave reaches the store in
the order it happened here.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable

from hub.metrics import Metrics

log = logging.getLogger("hub.presence")
Listener = Callable[[int, bool], Awaitable[None]]


class PresenceStore(ABC):
    """Deployment-wide presence state. Each call is one atomic step (one Redis command)."""

    @abstractmethod
    async def arrive(self, user_id: int) -> bool:
        """This process now holds the user; True when they are to be announced online."""

    @abstractmethod
    async def leave(self, user_id: int) -> bool:
        """This process no longer holds the user; True when no process does."""

    @abstractmethod
    async def settle(self, user_id: int) -> bool:
        """After the grace: True when the user is still offline and was announced online (the
        caller announces them offline; exactly one caller gets True)."""

    @abstractmethod
    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """Which of these users are online."""

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

    async def arrive(self, user_id: int) -> bool:
        self._held.add(user_id)
        if user_id in self._shown:
            return False
        self._shown.add(user_id)
        return True

    async def leave(self, user_id: int) -> bool:
        self._held.discard(user_id)
        return True

    async def settle(self, user_id: int) -> bool:
        if user_id in self._held or user_id not in self._shown:
            return False
        self._shown.discard(user_id)
        return True

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        return {user_id for user_id in user_ids if user_id in self._held}

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
        self._work: asyncio.Queue[tuple[bool, int]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._settling: dict[int, asyncio.Task[None]] = {}  # user -> its grace
        self._closed = False
        self._retry: set[int] = set()  # users whose change the store missed (Redis away)

    def listen(self, listener: Listener) -> None:
        """Call `listener(user_id, online)` on every announced change."""
        self._listeners.append(listener)

    async def online(self, user_ids: Iterable[int]) -> list[int]:
        """The online users among these, ascending."""
        return sorted(await self._store.online(user_ids))

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
        self._work.put_nowait((arriving, user_id))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="presence")

    async def _run(self) -> None:
        while True:
            arriving, user_id = await self._work.get()
            try:
                if arriving:
                    if await self._store.arrive(user_id):
                        await self._announce([user_id], True)
                elif await self._store.leave(user_id) and user_id not in self._settling:
                    self._settling[user_id] = asyncio.get_running_loop().create_task(
                        self._settle(user_id), name="presence-grace")
            except Exception as exc:
                log.warning("presence of user %s not recorded (%s); the next heartbeat retries",
                            user_id, exc)
                self._retry.add(user_id)

    async def _settle(self, user_id: int, *, wait: bool = True) -> None:
        if wait:
            try:
                await asyncio.sleep(self._grace)
            finally:
                self._settling.pop(user_id, None)
        try:
            if await self._store.settle(user_id):
                await self._announce([user_id], False)
        except Exception:
            log.warning("presence of user %s not settled", user_id, exc_info=True)

    async def _announce(self, user_ids: list[int], online: bool) -> None:
        for user_id in user_ids:
            for listener in self._listeners:
                try:
                    await listener(user_id, online)
                except Exception:
                    log.exception("a presence listener failed for user %s", user_id)

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
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for user_id, task in list(self._settling.items()):
            task.cancel()
            await self._settle(user_id, wait=False)  # not left for the sweep to find
        try:
            await self._announce(await self._store.close(), False)
        except Exception:
            log.warning("presence not withdrawn at shutdown", exc_info=True)
