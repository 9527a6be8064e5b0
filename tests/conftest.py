"""Shared fixtures: a private PostgreSQL database and Redis db per run, and real hub servers.

Every test talks to real services: the PostgreSQL and Redis that `scripts/services` starts,
and a hub served by uvicorn on a free port of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn

from hub.app import create_app
from hub.db import Database
from hub.migrate import upgrade
from hub.server import uvicorn_options
from hub.settings import Settings

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
RUN_ID = secrets.token_hex(4)
TEST_SECRET = "test-secret-" + "x" * 40
# Every test registers and logs in from 127.0.0.1: the suite's hubs allow that many attempts a
# minute; the tests of the limits themselves set low ones.
TEST_AUTH_RATE_LIMIT = 1_000_000
_names = itertools.count(1)


def unique_name(prefix: str = "u") -> str:
    """A username no other test of this run uses."""
    return f"{prefix}{RUN_ID[:4]}_{next(_names)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _pg_admin(sql: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def private_database(tag: str) -> Iterator[str]:
    """An empty PostgreSQL database of the caller alone, dropped (with whatever is still
    connected) afterwards; yields its plain `postgresql://` URL. For code outside the event loop:
    fixtures of hub processes, whose background loops must not see another hub's rows."""
    name = f"hub_{tag}_{RUN_ID}_{secrets.token_hex(3)}"
    # a thread of its own: asyncio.run here would unset the event loop of the test session
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _pg_admin(f'CREATE DATABASE "{name}"')).result()
        try:
            yield _pg_url(name)
        finally:
            thread.submit(asyncio.run, _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')).result()


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A database of this run's own, migrated, dropped at the end."""
    name = f"hub_test_{RUN_ID}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    url = _pg_url(name).replace("postgresql://", "postgresql+asyncpg://")
    db = Database(url)
    db.open()
    await upgrade(db)
    await db.close()
    yield url
    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database migrated once; every SQLite-backed settings gets a copy of its own, so
    that no test can leave a lock or rows behind for another."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    db.open()
    await upgrade(db)
    await db.close()
    return path


def _sqlite_copy(request: pytest.FixtureRequest) -> str:
    template = request.getfixturevalue("sqlite_template")
    path = request.getfixturevalue("tmp_path_factory").mktemp("sqlite") / "hub.db"
    with contextlib.closing(sqlite3.connect(template)) as source, \
            contextlib.closing(sqlite3.connect(path)) as target:
        source.backup(target)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
async def redis_url() -> AsyncIterator[str]:
    """A Redis db number nobody else uses (flushed at the end); channels get a run prefix."""
    for number in range(15, 0, -1):
        client = aioredis.from_url(f"{REDIS_BASE_URL}/{number}")
        try:
            claimed = await client.set("hub-test:claim", RUN_ID, nx=True, ex=3600)
            if claimed and await client.dbsize() == 1:
                url = f"{REDIS_BASE_URL}/{number}"
                yield url
                await client.flushdb()
                return
            if claimed:
                await client.delete("hub-test:claim")
        finally:
            await client.aclose()
    pytest.fail("no free Redis db number between 1 and 15")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest) -> Settings:
    """Settings for a hub on `backend`: SQLite with the in-process broker, or PostgreSQL with Redis."""
    return backend_settings(backend, request)


def backend_settings(backend: str, request: pytest.FixtureRequest) -> Settings:
    """The `settings` fixture's value, for fixtures of a wider scope (e.g. one hub per module)."""
    base = Settings(env="dev", jwt_secret=TEST_SECRET, hub_api_key="test-hub-api-key",
                    parser_service_token="test-parser-token", exchange_service_token="test-exchange-token",
                    redis_channel_prefix=f"test{RUN_ID}:", log_level="DEBUG",
                    # tests post and log in faster than people; the limit tests set their own
                    auth_rate_limit=TEST_AUTH_RATE_LIMIT, chat_post_rate=1000.0,
                    chat_post_burst=TEST_AUTH_RATE_LIMIT)
    if backend == "sqlite":
        return replace(base, database_url=_sqlite_copy(request))
    return replace(base, database_url=request.getfixturevalue("postgres_url"),
                   redis_url=request.getfixturevalue("redis_url"))


@dataclass
class RunningHub:
    settings: Settings
    base_url: str
    http: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"


@contextlib.asynccontextmanager
async def serve_hub(settings: Settings, port: int | None = None,
                    http: str | None = None) -> AsyncIterator[RunningHub]:
    """A real hub on 127.0.0.1 (a free port unless `port` is given, so a restarted hub can keep
    its address), stopped (gracefully) on exit; `http` replaces the hub's own HTTP protocol by
    one of uvicorn's (its `http` option)."""
    port = port or free_port()
    options = uvicorn_options(settings)
    if http is not None:
        options["http"] = http
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", access_log=False,
                            ws=app.state.websocket_protocol, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("hub stopped during start-up")
            await asyncio.sleep(0.02)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            yield RunningHub(settings, base_url, http)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(30):
                await asyncio.shield(task)
        except TimeoutError:
            raise TimeoutError("the hub did not stop within 30 s; its tasks:\n"
                               + _task_stacks(exclude=asyncio.current_task())) from None
        finally:
            task.cancel()


def _task_stacks(exclude: asyncio.Task[object] | None) -> str:
    """Where every other task of the loop waits (for a hub that does not stop)."""
    lines: list[str] = []
    for each in asyncio.all_tasks():
        if each is exclude:
            continue
        frames, awaited = [], each.get_coro()
        while awaited is not None and len(frames) < 12:  # down the chain of awaits
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                frames.append(frame)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        where = " <- ".join(f"{f.f_code.co_name} ({Path(f.f_code.co_filename).name}:{f.f_lineno})"
                            for f in reversed(frames))
        lines.append(f"  {each.get_name()}: {where}")
    return "\n".join(sorted(lines))


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The store of `settings` opened directly, without a hub (migrated, as the hub would)."""
    database = Database(settings.database_url)
    database.open()
    if settings.uses_sqlite:
        await upgrade(database)
    yield database
    await database.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_settings(request: pytest.FixtureRequest) -> Settings:
    return backend_settings(str(request.param), request)


@pytest.fixture(scope="module")
async def module_hub(module_settings: Settings) -> AsyncIterator[RunningHub]:
    """One hub per backend for a whole module whose tests only touch users of their own: Argon2
    makes every start cost a hash, and such a module would otherwise start a hundred servers."""
    async with serve_hub(module_settings) as running:
        yield running


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[RunningHub]:
    async with serve_hub(settings) as running:
        yield running


@dataclass
class Account:
    id: int
    username: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def register(http: httpx.AsyncClient, username: str | None = None,
                   password: str = "correct horse battery") -> Account:
    """Register and log in through the REST API."""
    name = username or unique_name()
    created = await http.post("/api/v1/auth/register", json={"username": name, "password": password})
    assert created.status_code == 201, created.text
    tokens = await http.post("/api/v1/auth/login", json={"username": name, "password": password})
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    return Account(created.json()["id"], name, password, body["access_token"], body["refresh_token"])


@pytest.fixture
def tmp_cwd(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)
