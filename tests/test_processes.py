"""The hub as operators run it: `hub serve` processes, gunicorn workers, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hub.settings import Settings
from tests.conftest import RUN_ID, TEST_AUTH_RATE_LIMIT, TEST_SECRET, free_port
from tests.wsutil import connect, make_users, publish

API_KEY = "test-hub-api-key"
HUB = str(Path(sys.executable).with_name("hub"))


@pytest.fixture
def backend() -> str:
    return "postgres"


def _env(settings: Settings) -> dict[str, str]:
    assert settings.redis_url is not None
    return {**os.environ, "HUB_ENV": "dev", "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url, "JWT_SECRET": TEST_SECRET, "HUB_API_KEY": API_KEY,
            "REDIS_CHANNEL_PREFIX": f"test{RUN_ID}:", "LOG_LEVEL": "WARNING",
            "AUTH_RATE_LIMIT": str(TEST_AUTH_RATE_LIMIT)}


@contextlib.asynccontextmanager
async def hub_process(settings: Settings, *args: str, env: dict[str, str] | None = None,
                      ) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """`hub serve` on a free port with the settings' stores (and `env` on top); its base URL."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally, after the process
    process = subprocess.Popen([HUB, "serve", "--port", str(port), *args],
                               env={**_env(settings), **(env or {})},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(30), httpx.AsyncClient() as http:
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(log.read().decode(errors="replace"))
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(base + "/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        yield process, base
    finally:
        _stop_group(process)
        log.close()


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to the hub and its gunicorn workers (their own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; init reaps it


async def test_two_hub_processes_deliver_to_sockets_on_both(settings: Settings) -> None:
    ((user_id, token),) = await make_users(settings, 1)
    async with hub_process(settings) as (_, first), hub_process(settings) as (_, second):
        on_first = await connect(first.replace("http", "ws") + "/ws", token)
        on_second = await connect(second.replace("http", "ws") + "/ws", token)
        async with httpx.AsyncClient(base_url=first) as http:
            await publish(http, API_KEY, [user_id], "both", {"n": 1})
        async with httpx.AsyncClient(base_url=second) as http:
            await publish(http, API_KEY, [user_id], "both", {"n": 2})
        for sock in (on_first, on_second):
            frames = await sock.events(2)
            assert [(f["id"], f["data"]["n"]) for f in frames] == [(1, 1), (2, 2)]
            await sock.close()


async def test_gunicorn_workers_deliver_every_event_to_every_socket(settings: Settings) -> None:
    users = await make_users(settings, 10)
    async with hub_process(settings, "--workers", "2") as (_, base):
        url = base.replace("http", "ws") + "/ws"
        sockets = [await connect(url, token) for _, token in users for _ in range(2)]
        async with httpx.AsyncClient(base_url=base) as http:
            for n in range(5):
                await publish(http, API_KEY, [user_id for user_id, _ in users], "tick", {"n": n})
        for sock in sockets:
            assert [f["data"]["n"] for f in await sock.events(5)] == [0, 1, 2, 3, 4]
            await sock.close()


async def test_workers_stop_when_the_master_is_killed(settings: Settings) -> None:
    ((_, token),) = await make_users(settings, 1)
    async with hub_process(settings, "--workers", "2") as (process, base):
        sock = await connect(base.replace("http", "ws") + "/ws", token)
        workers = _children(process.pid)
        assert len(workers) == 2, workers
        process.send_signal(signal.SIGKILL)  # the OOM killer's way: no chance to stop the workers
        assert await sock.closed(timeout=30) == 1012  # the orphans shut down gracefully all the same
        async with asyncio.timeout(30):
            while any(_alive(pid) for pid in workers):
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_closes_sockets_with_1012_and_exits_0(settings: Settings, workers: str) -> None:
    ((_, token),) = await make_users(settings, 1)
    async with hub_process(settings, "--workers", workers) as (process, base):
        sock = await connect(base.replace("http", "ws") + "/ws", token)
        process.send_signal(signal.SIGTERM)
        assert await sock.closed(timeout=30) == 1012
        async with asyncio.timeout(30):
            while process.poll() is None:
                await asyncio.sleep(0.1)
        assert process.returncode == 0


async def test_several_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    env.pop("REDIS_URL", None)
    result = subprocess.run([HUB, "serve", "--workers", "2", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
