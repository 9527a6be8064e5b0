"""Database access: the declarative base, one async engine per process, and UTC timestamps.

`Database` is built from a URL without I/O; `open()`/`close()` (called by the app's lifespan)
create and dispose the engine. Services open one transaction per unit of work with
`async with db.sessions.begin() as session:`; query functions take that session and never commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every table of every package, so one migration history covers them all."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """`2026-11-22T10:00:00.123Z`: UTC with milliseconds, as the contract writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Sessions:
    """`sessions()` opens a read session; `sessions.begin()` a unit of work that commits on exit.
    On SQLite the two differ: writers begin IMMEDIATE (so concurrent writers queue instead of
    failing), readers begin DEFERRED (so reads never wait for the write lock)."""

    def __init__(self, writers: async_sessionmaker[AsyncSession],
                 readers: async_sessionmaker[AsyncSession]) -> None:
        self._writers = writers
        self._readers = readers

    def __call__(self) -> AsyncSession:
        return self._readers()

    def begin(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        return self._writers.begin()


class Database:
    """One engine and session factory for the process; open it once, close it at shutdown."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._readers: AsyncEngine | None = None
        self._single_statements: AsyncEngine | None = None
        self._sessions: Sessions | None = None

    @property
    def dialect(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database.open() was not called (the app's lifespan opens it)")
        return self._engine

    @property
    def readers(self) -> AsyncEngine:
        """The engine for one read on a bare connection: autocommit on PostgreSQL (no BEGIN and
        COMMIT round trips), on SQLite a transaction that begins DEFERRED."""
        if self._readers is None:
            raise RuntimeError("Database.open() was not called (the app's lifespan opens it)")
        return self._readers

    def single_statement(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for one self-contained write. On PostgreSQL it is in autocommit mode:
        the statement commits itself, with no BEGIN and COMMIT round trips to hold its row locks
        across while the event loop is busy. On SQLite, a transaction."""
        engine = self._single_statements
        if engine is None:
            raise RuntimeError("Database.open() was not called (the app's lifespan opens it)")
        return engine.connect() if self.dialect == "postgresql" else engine.begin()

    async def held_single_statement(self) -> AsyncConnection:
        """PostgreSQL: a `single_statement()` connection to keep across calls (`HeldConnection`);
        the caller closes it."""
        if self._single_statements is None or self.dialect != "postgresql":
            raise RuntimeError("held connections are for PostgreSQL once Database.open() ran")
        conn = self._single_statements.connect()
        await conn.start()
        return conn

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            raise RuntimeError("Database.open() was not called (the app's lifespan opens it)")
        return self._sessions

    def open(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            # no pre-ping: it costs two round trips per checkout; a connection that died is
            # found on use instead, and the whole pool generation is dropped (errors.py: 503)
            # Custom plans always: statements are prepared, and after five runs PostgreSQL may
            # switch to a generic plan that assumes a small array; the stream writes take
            # arrays of 1 to 10,000 user ids, and a plan for ten took seconds for ten thousand.
            # No overflow: a connection opened past the pool is closed when it is returned, so a
            # burst (thousands of sockets connecting at once) opened and closed one per query,
            # a TLS handshake each; past the pool, a checkout waits for a connection instead.
            kwargs.update(pool_size=self._pool_size, max_overflow=0,
                          connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}})
        else:
            kwargs.update(connect_args={"timeout": 30})
        self._engine = create_async_engine(self.url, **kwargs)
        readers = self._engine
        if self.dialect == "sqlite":
            _serialize_sqlite_writers(self._engine)
            readers = self._engine.execution_options(sqlite_begin="DEFERRED")
        self._single_statements = (self._engine.execution_options(isolation_level="AUTOCOMMIT")
                                   if self.dialect == "postgresql" else self._engine)
        self._readers = self._single_statements if self.dialect == "postgresql" else readers
        self._sessions = Sessions(async_sessionmaker(self._engine, expire_on_commit=False),
                                  async_sessionmaker(readers, expire_on_commit=False))

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._readers = self._single_statements = None
        self._sessions = None

    async def ping(self) -> None:
        """Run a trivial query; raises when the database cannot be reached."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


class HeldConnection:
    """One autocommit PostgreSQL connection kept between the calls of a single writer (the
    group-commit appends, which run one batch at a time): no pool checkout and return per
    statement. Any failure drops it, and the next call takes a fresh one; a lost connection is
    raised as SQLAlchemy raises one (`DBAPIError` with `connection_invalidated`: a 503)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: AsyncConnection | None = None
        self._taken = 0.0

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[AsyncConnection]:
        conn = self._conn
        if conn is not None and conn.sync_engine.pool._invalidate_time > self._taken:
            # another user of the pool found the server gone and dropped the pool's generation:
            # this connection is of that generation, so it is dropped too, unused
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()
            conn = None
        if conn is None:
            self._taken = time.time()
            conn = self._conn = await self._db.held_single_statement()
        try:
            yield conn
        except BaseException as exc:
            self._conn = None
            lost = isinstance(exc, Exception) and not isinstance(exc, DBAPIError) and _lost(exc)
            with contextlib.suppress(Exception):
                if lost:  # what SQLAlchemy does on a disconnect: drop the pool's generation,
                    # whose other connections died with this one (a restart, a failover)
                    conn.sync_engine.pool._invalidate(await conn.get_raw_connection(), exc)
                await conn.invalidate()
                await conn.close()
            if lost:
                raise DBAPIError(None, None, exc, connection_invalidated=True) from exc
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _lost(exc: Exception) -> bool:
    """Whether asyncpg's `exc` means the connection is gone (not a statement's error)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(("08", "57"))  # connection, operator intervention
    # InternalClientError: the protocol's state is off, e.g. "another operation is in progress"
    # when the server's goodbye (a terminated backend) arrived while the connection sat idle
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError)


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """SQLite: WAL, foreign keys, and BEGIN IMMEDIATE so concurrent writers queue instead of failing."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "IMMEDIATE"))
