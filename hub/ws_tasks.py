"""The tasks one `/ws` socket runs besides its callbacks: the start after `auth` (register,
stream head, welcome), token refreshes and features' client frames. They end with the socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("hub.ws")


class SocketTasks:
    """Runs a socket's tasks; `cancel` ends them all (but the one calling it). A task that fails
    is logged and `failed` called (the socket closes with 1011)."""

    __slots__ = ("_failed", "_tasks")

    def __init__(self, failed: Callable[[], None]) -> None:
        self._failed = failed
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task (created at once, so a socket closed before its first step
        leaves no coroutine never awaited)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def cancel(self) -> None:
        current = asyncio.current_task()
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            if task is not current:
                task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("WebSocket connection failed", exc_info=error)
            self._failed()
