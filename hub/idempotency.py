"""Idempotency keys: a retried request with the same key gets the first answer again (24 h).

The stored answer is inserted in the same transaction as the work it answers, so a concurrent
duplicate fails on the primary key and rolls its own work back; the caller then returns the
stored answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import utcnow
from hub.errors import Conflict, Invalid
from hub.models import IdempotencyKey

TTL = dt.timedelta(hours=24)
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"
# What `check_key` accepts, for the OpenAPI document (the HTTP layer drops surrounding spaces,
# so a key needs one visible character).
KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
              "pattern": "^[ -~]*[!-~][ -~]*$",
              "description": "a retry with the same key within 24 h returns the first answer"}


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    body: bytes


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(key: str | None) -> str | None:
    """The header value, or 422 when it is empty, too long or not printable ASCII."""
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise Invalid({"Idempotency-Key": f"1 to {MAX_KEY_LENGTH} printable ASCII characters"})
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
