"""Idempotency keys: a retried request with the same key gets the first answer again (24 h).

`answer_once` is the whole flow, for every call that takes an `Idempotency-Key` (the publish
API, chat posts): look the key up (a different request body under it is 409), replay a stored
answer, otherwise do the work and store its answer in the same transaction, so a concurrent
duplicate fails on the key's primary key, rolls its own work back and replays the winner's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from hub.db import Database, utcnow
from hub.errors import Conflict, Invalid
from hub.events import EventBus, Transaction
from hub.models import IdempotencyKey

TTL = dt.timedelta(hours=24)
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"
REPLAYED = ("idempotent-replayed", "true")  # the header of a replayed answer
# What `check_key` accepts, for the OpenAPI document (the HTTP layer drops surrounding spaces,
# so a key needs one visible character).
KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
              "pattern": "^[ -~]*[!-~][ -~]*$",
              "description": "a retry with the same key within 24 h returns the first answer"}


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A call made with an Idempotency-Key: whose keys it uses (`scope`), the key, and the
    fingerprint of what was asked (the same key with another fingerprint is 409)."""

    scope: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, scope: str, key: str | None, asked: bytes) -> KeyedRequest | None:
        """None for a call without a key; `asked` is what a retry must repeat exactly."""
        return None if key is None else cls(scope, key, fingerprint(asked))


Work = Callable[[Transaction], Awaitable[StoredAnswer]]


async def answer_once(db: Database, events: EventBus, request: KeyedRequest | None, work: Work, *,
                      before_work: Callable[[], Awaitable[None]] | None = None,
                      ) -> tuple[StoredAnswer, bool]:
    """Answer `request` once per key: returns the answer and whether it is a replay.

    A key whose answer is stored (24 h) gets it back and nothing else runs (409 if the key came
    with another fingerprint). Otherwise `before_work()` runs (e.g. spending a rate limit), then
    `work(tx)` in one transaction of `events` with its answer stored under the key: both commit
    together, and whatever `before_work` or `work` raises leaves nothing written and the key
    free. A concurrent duplicate loses on the key's primary key, rolls its work back and
    replays the winner's answer. Without a key, it is `before_work` and `work` alone."""
    if request is not None:
        async with db.sessions() as session:
            stored = await lookup(session, request.scope, request.key, request.fingerprint)
        if stored is not None:
            return stored, True
    if before_work is not None:
        await before_work()
    try:
        async with events.transaction() as tx:
            answer = await work(tx)
            if request is not None:
                await remember(tx.session, request.scope, request.key, request.fingerprint, answer)
    except IntegrityError:
        if request is None:
            raise
        async with db.sessions() as session:
            stored = await lookup(session, request.scope, request.key, request.fingerprint)
        if stored is None:
            raise
        return stored, True
    return answer, False


def response(answer: StoredAnswer, replayed: bool) -> Response:
    """The HTTP answer; a replay carries `Idempotent-Replayed: true`."""
    return Response(answer.body, answer.status_code, media_type="application/json",
                    headers=dict([REPLAYED]) if replayed else None)


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def read_key(request: Request) -> str | None:
    """The request's Idempotency-Key, or None; 422 when it is empty, too long or not
    printable ASCII."""
    return check_key(request.headers.get(HEADER))


def check_key(key: str | None) -> str | None:
    """The header value, or 422 when it is empty, too long or not printable ASCII."""
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise Invalid({HEADER: f"1 to {MAX_KEY_LENGTH} printable ASCII characters"})
    return key


async def lookup(session: AsyncSession, scope: str, key: str, print_: str) -> StoredAnswer | None:
    """The stored answer of an unexpired key; 409 if the key was used with another body."""
    row = await session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key,
                                     IdempotencyKey.created_at > utcnow() - TTL)
    )
    if row is None:
        return None
    if row.fingerprint != print_:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return StoredAnswer(row.status_code, row.body)


async def remember(session: AsyncSession, scope: str, key: str, print_: str,
                   answer: StoredAnswer) -> None:
    """Store the answer (replacing an expired one); flushes, so a duplicate raises IntegrityError."""
    await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key,
                                     IdempotencyKey.created_at <= utcnow() - TTL)
    )
    session.add(IdempotencyKey(scope=scope, key=key, fingerprint=print_,
                               status_code=answer.status_code, body=answer.body, created_at=utcnow()))
    await session.flush()


async def expire(session: AsyncSession) -> int:
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at <= utcnow() - TTL))
    return int(getattr(result, "rowcount", 0) or 0)
