"""The public API through which features write events: data change and events in one
transaction, published after the commit.

    CHAT_CREATED = EventType("chat.created", ChatOut, "every member of the new chat")  # chat/events.py

    async with events.transaction() as tx:
        chat = await create_chat(tx.session, ...)
        await tx.emit(member_ids, CHAT_CREATED(chat))
    # committed; the events are on their way to every live connection

Every event a feature emits is declared once, next to the feature, as an `EventType`: its name
and the pydantic model of its `data`. Calling the declaration with the data (an instance of that
model, so mypy checks the shape) encodes it once into an `Event`, which `emit` appends to any
number of streams. The composition root collects the declarations of every feature
(`Feature.events`); the AsyncAPI document and the tests read them from there. Only the publish
API writes events of free-form names and data (`Event.published`).

An event that fails to reach the broker after commit is republished by the relay, so an API
call that answered 2xx never loses its event.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from hub import streams
from hub.batching import Batcher
from hub.db import Database, HeldConnection
from hub.streams import StoredEvent

AfterCommit = Callable[[Sequence[StoredEvent]], Any]
MAX_GROUP_USERS = 20_000  # users per group-committed statement
# A closed loop of publishers is answered, and calls again, within this (hub/batching.py)
REGROUP_SECONDS = 0.002
EVENT_NAME = r"^[a-z][a-z0-9_.:-]{0,63}$"  # protocol §5, declared and published names alike
DataT = TypeVar("DataT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Event:
    """An event ready to be appended to any number of streams: its name and its `data` as JSON
    bytes, encoded once. Made by calling an `EventType`, or by `Event.published`."""

    name: str
    data_json: bytes

    @classmethod
    def published(cls, name: str, data_json: bytes) -> Event:
        """A free-form event of the publish API (§9), whose body validation already matched
        `name` against EVENT_NAME; data as the backend sent it. Features declare their events
        instead (tests/test_declared_events.py checks that none calls this)."""
        return cls(name, data_json)


def _exact_number(value: Any) -> Any:
    # A Decimal (money) is written as a JSON number with exactly its digits, never a float.
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f").encode("ascii"))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class EventType(Generic[DataT]):
    """A declared event: `name`, the pydantic model of its `data`, and to whom it goes (for the
    protocol's description). `EVENT_TYPE(data)` checks the model and encodes the data once."""

    __slots__ = ("data", "name", "recipients")

    def __init__(self, name: str, data: type[DataT], recipients: str) -> None:
        if not re.fullmatch(EVENT_NAME, name):
            raise ValueError(f"event name {name!r} does not match {EVENT_NAME}")
        self.name, self.data, self.recipients = name, data, recipients

    def __call__(self, data: DataT) -> Event:
        if type(data) is not self.data:  # mypy catches it first; this costs ~50 ns
            raise TypeError(f"{self.name} takes {self.data.__name__}, not {type(data).__name__}")
        return Event(self.name, orjson.dumps(data.model_dump(), default=_exact_number))

    def __repr__(self) -> str:
        return f"EventType({self.name!r}, {self.data.__name__})"


def declared(event_types: Iterable[EventType[Any]]) -> Mapping[str, EventType[Any]]:
    """The declarations of every feature by name; raises ValueError when two declare one name."""
    by_name: dict[str, EventType[Any]] = {}
    for event_type in event_types:
        if by_name.setdefault(event_type.name, event_type) is not event_type:
            raise ValueError(f"event {event_type.name!r} is declared twice")
    return dict(sorted(by_name.items()))


class Transaction:
    """One unit of work: a session (never commit it yourself) and the events written so far."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.events: list[StoredEvent] = []

    async def emit(self, user_ids: Sequence[int], event: Event) -> list[StoredEvent]:
        """Append `event` (its data encoded once, whatever the number of users) to each user's
        stream; returns the stored events, one per existing user, in user-id order."""
        written = await streams.append(self.session, user_ids, event.name, event.data_json)
        self.events.extend(written)
        return written


class _RollBack(Exception):
    """Leaves a transaction without committing it."""


class EventBus:
    """Opens transactions whose events are published once they commit."""

    def __init__(self, db: Database, after_commit: AfterCommit) -> None:
        self._db = db
        self._after_commit = after_commit
        self.on_commit: list[Callable[[], None]] = []  # told of each commit (the push decider)
        self._writer = HeldConnection(db)  # the appends run one batch at a time
        self._appends: Batcher[streams.AppendRequest, list[StoredEvent] | None] = Batcher(
            self._append, "event-writer", weight=lambda request: len(request[0]),
            limit=MAX_GROUP_USERS, regroup=REGROUP_SECONDS)

    async def publish(self, user_ids: Sequence[int], event: Event) -> list[StoredEvent] | None:
        """Events and nothing else: append `event` to every user's stream, all or none, and
        publish. None (nothing written) when a user does not exist. On PostgreSQL the requests
        made while a write is in flight are written together by the next one, in one
        self-committing statement (group commit: no row lock contention between them, one
        round trip for all), in the order they were made."""
        if self._db.dialect != "postgresql":
            try:
                async with self.transaction() as tx:
                    written = await tx.emit(user_ids, event)
                    if len(written) != len(set(user_ids)):
                        raise _RollBack
            except _RollBack:
                return None
            return written
        appended = await self._appends.submit((user_ids, event.name, event.data_json))
        if appended:
            await self._committed(appended)
        return appended

    async def _append(self, requests: list[streams.AppendRequest]) -> list[list[StoredEvent] | None]:
        async with self._writer.use() as conn:
            return await streams.append_batch(conn, requests)

    async def close(self) -> None:
        """At shutdown, before the database closes: the appends handed over finish first."""
        await self._appends.wait_idle()
        await self._writer.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._db.sessions.begin() as session:
            tx = Transaction(session)
            yield tx
        if tx.events:
            await self._committed(tx.events)

    async def _committed(self, events: Sequence[StoredEvent]) -> None:
        for hook in self.on_commit:
            hook()
        await self._after_commit(events)
