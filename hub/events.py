"""The public API through which features write events: data change and events in one
transaction, published after the commit.

    async with events.transaction() as tx:
        chat = await create_chat(tx.session, ...)
        await tx.emit(member_ids, "chat.created", chat_json)
    # committed; the events are on their way to every live connection

An event that fails to reach the broker after commit is republished by the relay, so an API
call that answered 2xx never loses its event.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from hub import streams
from hub.batching import Batcher
from hub.db import Database
from hub.streams import StoredEvent

AfterCommit = Callable[[Sequence[StoredEvent]], Any]
MAX_GROUP_USERS = 20_000  # users per group-committed statement


class Transaction:
    """One unit of work: a session (never commit it yourself) and the events written so far."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.events: list[StoredEvent] = []

    async def emit(self, user_ids: Sequence[int], name: str, data: Any) -> list[StoredEvent]:
        """Append event `name` with `data` (a JSON-able object, serialized once) to each user's
        stream; returns the stored events, one per existing user, in user-id order."""
        return await self.emit_json(user_ids, name, orjson.dumps(data))

    async def emit_json(self, user_ids: Sequence[int], name: str,
                        data_json: bytes) -> list[StoredEvent]:
        written = await streams.append(self.session, user_ids, name, data_json)
        self.events.extend(written)
        return written


class _RollBack(Exception):
    """Leaves a transaction without committing it."""


class EventBus:
    """Opens transactions whose events are published once they commit."""

    def __init__(self, db: Database, after_commit: AfterCommit) -> None:
        self._db = db
        self._after_commit = after_commit
        self._appends: Batcher[streams.AppendRequest, list[StoredEvent] | None] = Batcher(
            self._append, "event-writer", weight=lambda request: len(request[0]),
            limit=MAX_GROUP_USERS)

    async def publish(self, user_ids: Sequence[int], name: str,
                      data_json: bytes) -> list[StoredEvent] | None:
        """Events and nothing else: append `name` to every user's stream, all or none, and
        publish. None (nothing written) when a user does not exist. On PostgreSQL the requests
        made while a write is in flight are written together by the next one, in one
        self-committing statement (group commit: no row lock contention between them, one
        round trip for all), in the order they were made."""
        if self._db.dialect != "postgresql":
            try:
                async with self.transaction() as tx:
                    written = await tx.emit_json(user_ids, name, data_json)
                    if len(written) != len(set(user_ids)):
                        raise _RollBack
            except _RollBack:
                return None
            return written
        appended = await self._appends.submit((user_ids, name, data_json))
        if appended:
            await self._after_commit(appended)
        return appended

    async def _append(self, requests: list[streams.AppendRequest]) -> list[list[StoredEvent] | None]:
        async with self._db.single_statement() as conn:
            return await streams.append_batch(conn, requests)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._db.sessions.begin() as session:
            tx = Transaction(session)
            yield tx
        if tx.events:
            await self._after_commit(tx.events)
