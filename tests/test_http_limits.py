"""A request's head (request line and headers) is bounded in time and bytes by the hub itself,
nginx or not; the hub raises its own open-file limit at start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from hub.settings import Settings
from tests.conftest import TEST_SECRET, RunningHub, free_port, serve_hub
from tests.test_processes import HUB, _stop_group

WAIT = 10.0


@pytest.fixture
def backend() -> str:
    return "sqlite"


@contextlib.asynccontextmanager
async def _tight_hub(settings: Settings, **limits: float) -> AsyncIterator[tuple[RunningHub, int]]:
    async with serve_hub(replace(settings, **limits)) as hub:
        yield hub, int(hub.base_url.rsplit(":", 1)[1])


async def _answer(reader: asyncio.StreamReader, timeout: float = WAIT) -> bytes:
    """What the server sends until it closes the connection (a reset ends it too)."""
    received = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_silent_connection_is_closed_after_the_header_timeout(settings: Settings) -> None:
    async with _tight_hub(settings, http_header_timeout=0.5) as (hub, port):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _answer(reader) == b""  # nothing was asked, so nothing is answered
        assert 0.4 < time.monotonic() - started < 5
        writer.close()
        assert (await hub.http.get("/healthz")).status_code == 200


async def test_a_slowloris_drip_is_closed_by_the_whole_head_deadline(settings: Settings) -> None:
    async with _tight_hub(settings, http_header_timeout=1.0) as (_hub, port):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: ")

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                while True:  # a byte every 0.1 s: far within any per-read timeout
                    await asyncio.sleep(0.1)
                    writer.write(b"a")
                    await writer.drain()

        dripping = asyncio.create_task(drip())
        answer = await _answer(reader)
        dripping.cancel()
        assert time.monotonic() - started < 4
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"error":"timeout"' in answer
        writer.close()


async def test_an_oversized_head_is_refused_with_431(settings: Settings) -> None:
    async with _tight_hub(settings, http_max_header_bytes=8192) as (_hub, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = await _answer(reader)
        assert answer.startswith(b"HTTP/1.1 431"), answer
        assert b'"error":"too_large"' in answer
        writer.close()


async def test_endless_heads_do_not_grow_memory(settings: Settings) -> None:
    """Four clients each stream a 64 MiB header; the hub stops reading each soon after the bound."""
    async with _tight_hub(settings, http_max_header_bytes=16384) as (hub, port):
        chunk = b"a" * 65536
        before = _rss()

        async def endless_header() -> int:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = 0
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(WAIT):
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    while sent < 64 * 1024 * 1024:
                        writer.write(chunk)
                        await writer.drain()
                        sent += len(chunk)
            writer.close()
            return sent

        sent = await asyncio.gather(*(endless_header() for _ in range(4)))
        assert all(n < 64 * 1024 * 1024 for n in sent), sent  # each was cut off
        assert _rss() - before < 32 * 1024 * 1024
        assert (await hub.http.get("/healthz")).status_code == 200


async def test_bodies_and_kept_alive_connections_are_not_bounded_as_heads(settings: Settings) -> None:
    async with _tight_hub(settings, http_header_timeout=0.5, http_max_header_bytes=2048) as (hub, port):
        big = {"username": "x" * 500_000, "password": "y"}
        response = await hub.http.post("/api/v1/auth/login", json=big)
        assert response.status_code in (401, 422), response.text  # judged by the app, not refused as a head
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # idle between requests longer than the head timeout
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(WAIT):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
            await asyncio.sleep(1.0)
        writer.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_gunicorn_workers_bound_heads_and_raise_the_open_file_limit(settings: Settings) -> None:
    """`hub serve --workers 2` started with a soft open-file limit of 256: the master and its
    workers run with the hard limit, and a worker closes a silent connection at the timeout."""
    assert settings.redis_url is not None
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip("the hard open-file limit leaves nothing to raise")
    port = free_port()
    env = {**os.environ, "HUB_ENV": "dev", "DATABASE_URL": settings.database_url,
           "REDIS_URL": settings.redis_url, "JWT_SECRET": TEST_SECRET, "LOG_LEVEL": "INFO",
           "HTTP_HEADER_TIMEOUT": "1"}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [HUB, "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
        try:
            async with asyncio.timeout(30), httpx.AsyncClient() as http:
                while True:
                    assert process.poll() is None, "hub serve exited"
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)
            for pid in [process.pid, *_children(process.pid)]:
                assert _soft_open_files(pid) == hard
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _answer(reader) == b""
            assert 0.8 < time.monotonic() - started < 6
            writer.close()
        finally:
            _stop_group(process)
            log.seek(0)
            output = log.read().decode(errors="replace")
    assert f"open-file limit raised from 256 to {hard}" in output, output


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _soft_open_files(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    return int(line.split()[3])
