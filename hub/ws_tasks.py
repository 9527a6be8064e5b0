"""The tasks one `/ws` socket runs besides its callbacks: the start after `auth` (register,
stream head, welcome), token refreshes and features' client frames. They end with the socket."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("hub.ws")


class SocketTasks(set[asyncio.Task[None]]):
    """Runs a socket's tasks; `cancel` ends them all (but the one calling it). The set of
    running tasks is the object itself; the socket lets it go once it is empty (an idle socket
    keeps none)."""

    __slots__ = ()

    def spawn(self, work: Coroutine[Any, Any, None], failed: Callable[[], None]) -> asyncio.Task[None]:
        """Run `work` as a task (created at once, so a socket closed before its first step
        leaves no coroutine never awaited); if it fails, it is logged and `failed` called. A
        done callback the caller adds to the task runs once it has left the set."""
        task = asyncio.get_running_loop().create_task(work)
        self.add(task)
        task.add_done_callback(functools.partial(self._done, failed))
        return task

    def cancel(self) -> None:
        current = asyncio.current_task()
        tasks = list(self)
        self.clear()
        for task in tasks:
            if task is not current:
                task.cancel()

    def _done(self, failed: Callable[[], None], task: asyncio.Task[None]) -> None:
        self.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("WebSocket connection failed", exc_info=error)
            failed()
