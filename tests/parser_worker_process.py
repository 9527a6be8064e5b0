"""`python -m parser_bridge.worker` as a real process for tests, on the Redis of a running hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

from tests.conftest import RunningHub


class Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def exited(self, timeout: float = 10) -> int:
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def output(self) -> str:
        assert self.process.stderr is not None
        async with asyncio.timeout(5):
            return (await self.process.stderr.read()).decode()


@contextlib.asynccontextmanager
async def run_worker(hub: RunningHub, **env: str) -> AsyncIterator[Worker]:
    environ = {**os.environ, "REDIS_URL": str(hub.settings.redis_url),
               "REDIS_CHANNEL_PREFIX": hub.settings.redis_channel_prefix,
               "PARSER_HEARTBEAT_TTL": "2", "PARSER_FETCH_TIMEOUT": "5", "LOG_LEVEL": "INFO", **env}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parser_bridge.worker", env=environ,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    worker = Worker(process)
    try:
        yield worker
    finally:
        if process.returncode is None:
            process.kill()
            async with asyncio.timeout(10):
                await process.wait()
