"""Parse requests: stored first, queued after commit, made final exactly once.

A request is inserted and committed, then pushed to the job queue; if the push fails the row
stays unqueued and `dispatch_unqueued` pushes it again. A result, whichever path brings it (the
parser's Redis key read by `collect_results`, or the REST call), is applied by `complete`: a
conditional `UPDATE ... WHERE status = 'pending'` whose winner writes `parse.completed` in the
same transaction; everyone later gets `AlreadyFinal`. `expire_overdue` fails requests older
than the timeout with `timeout`; all of it lives in the database, so it survives restarts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import Database, rfc3339, utcnow
from hub.events import Event, EventBus, Transaction
from hub.models import User
from parser_bridge.parse.events import PARSE_COMPLETED, ParseCompleted
from parser_bridge.parse.job_queue import Job, JobQueue, QueueUnavailable
from parser_bridge.parse.models import PARSE_FAILURE, PARSE_SUCCESS, PENDING, ParseRequest
from parser_bridge.parse.result import ParseResult

log = logging.getLogger("parser_bridge.parse")
DISPATCH_GRACE = 2.0  # seconds a fresh row is left to the request that created it
DISPATCH_BATCH = 500
COLLECT_LIMIT = 20_000  # pending ids looked up per collect step
SWEEP_BATCH = 500
MAX_DB_ID = 2**31 - 1


class UnknownRequest(Exception):
    pass


class AlreadyFinal(Exception):
    pass


class TooManyPending(Exception):
    """The user has `max_pending` requests pending; one is final within `retry_after` seconds
    (at the latest when the oldest times out)."""

    def __init__(self, max_pending: int, retry_after: int) -> None:
        super().__init__(f"{max_pending} parse requests are already pending")
        self.max_pending = max_pending
        self.retry_after = retry_after


@dataclass(frozen=True)
class ParseView:
    request_id: int
    owner_id: int
    url: str
    status: str
    title: str | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "url": self.url, "status": self.status,
                "title": self.title, "error": self.error,
                "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at)}

    def completed(self) -> Event:
        """The `parse.completed` event of a final request (validated: the status is final)."""
        return PARSE_COMPLETED(ParseCompleted.model_validate(
            {"request_id": self.request_id, "url": self.url, "status": self.status,
             "title": self.title, "error": self.error}))


def _view(row: ParseRequest) -> ParseView:
    return ParseView(row.id, row.owner_id, row.url, row.status, row.title, row.error,
                     row.created_at, row.updated_at)


class ParseRequests:
    """The parse request service; `timeout` is PARSE_TIMEOUT in seconds, `max_pending`
    PARSE_MAX_PENDING."""

    def __init__(self, db: Database, events: EventBus, queue: JobQueue, timeout: float,
                 max_pending: int) -> None:
        self._db = db
        self._events = events
        self._queue = queue
        self._timeout = dt.timedelta(seconds=timeout)
        self._max_pending = max_pending

    async def submit(self, owner_id: int, url: str) -> ParseView:
        """Store the request, then queue it (a failed push is retried by `dispatch_unqueued`);
        raises TooManyPending when the owner already has `max_pending` requests pending."""
        now = utcnow()
        async with self._db.sessions.begin() as session:
            # one submit per user at a time (the row lock), so the cap cannot be raced past
            await session.execute(select(User.id).where(User.id == owner_id)
                                  .with_for_update(key_share=True))
            # an overdue request is as good as failed: the cap frees exactly at its deadline
            oldest, pending = (await session.execute(
                select(func.min(ParseRequest.created_at), func.count())
                .where(ParseRequest.owner_id == owner_id, ParseRequest.status == PENDING,
                       ParseRequest.created_at > now - self._timeout))).one()
            if pending >= self._max_pending:
                wait = (oldest + self._timeout - now).total_seconds()
                raise TooManyPending(self._max_pending, max(1, math.ceil(wait)))
            row = ParseRequest(owner_id=owner_id, url=url, status=PENDING, created_at=now,
                               updated_at=now)
            session.add(row)
            await session.flush()
            view = _view(row)
        await self._push([(view.request_id, url, owner_id)])
        return view

    async def get(self, owner_id: int, request_id: int) -> ParseView | None:
        """The request if it exists and belongs to `owner_id`."""
        if not 0 < request_id <= MAX_DB_ID:
            return None
        async with self._db.sessions() as session:
            row = await session.get(ParseRequest, request_id)
            return _view(row) if row is not None and row.owner_id == owner_id else None

    async def html(self, owner_id: int, request_id: int) -> str | None:
        """The stored page of the owner's successful request, else None."""
        if not 0 < request_id <= MAX_DB_ID:
            return None
        async with self._db.sessions() as session:
            found = await session.execute(
                select(ParseRequest.html).where(ParseRequest.id == request_id,
                                                ParseRequest.owner_id == owner_id,
                                                ParseRequest.status == PARSE_SUCCESS))
            return found.scalar_one_or_none()

    async def complete(self, request_id: int, result: ParseResult) -> ParseView:
        """Make the request final with `result` and publish `parse.completed`, atomically;
        raises UnknownRequest, or AlreadyFinal when another result (or the timeout) won."""
        if not 0 < request_id <= MAX_DB_ID:
            raise UnknownRequest(request_id)
        async with self._events.transaction() as tx:
            views = await _finish(tx, [request_id], status=result.status, title=result.title,
                                  error=result.error, html=result.html)
            if not views:
                exists = await tx.session.get(ParseRequest, request_id)
                raise UnknownRequest(request_id) if exists is None else AlreadyFinal(request_id)
        return views[0]

    async def collect_results(self) -> None:
        """Loop step: apply every result waiting in the queue for a pending request (one round
        trip per 500 ids), then drop the applied ones."""
        if not self._queue.may_hold_results():
            return
        async with self._db.sessions() as session:
            pending = list((await session.execute(
                select(ParseRequest.id).where(ParseRequest.status == PENDING)
                .order_by(ParseRequest.id).limit(COLLECT_LIMIT))).scalars())
        if not pending:
            return
        found = await self._queue.take_results(pending)  # QueueUnavailable: the loop backs off
        applied: list[int] = []
        trouble: Exception | None = None
        for request_id, raw in found.items():
            try:
                await self._apply(request_id, raw)
            except Exception as exc:  # kept for the next pass; the others go on
                log.exception("could not apply the parser result of request %d", request_id)
                trouble = exc
                continue
            applied.append(request_id)
        await self._queue.discard_results(applied)
        if trouble is not None:
            raise trouble  # after every other result was applied: the loop backs off

    async def _apply(self, request_id: int, raw: bytes) -> None:
        """Apply one raw result; one that cannot be read or stored finalizes the request as a
        failure, so a bad result never blocks the others (nor comes back every pass)."""
        try:
            result = ParseResult.from_queue(raw)
        except ValueError as exc:
            details = exc.errors(include_url=False, include_input=False)[:3] \
                if isinstance(exc, ValidationError) else str(exc)
            log.warning("parser result for request %d is malformed: %s", request_id, details)
            result = ParseResult.failure("the parser sent a malformed result")
        try:
            with contextlib.suppress(UnknownRequest, AlreadyFinal):  # another path won
                await self.complete(request_id, result)
            return
        except Exception:  # the fallback below is stored, or its error goes up
            log.exception("could not store the parser result of request %d; failing it", request_id)
        with contextlib.suppress(UnknownRequest, AlreadyFinal):
            await self.complete(request_id, ParseResult.failure("the parser's result could not be stored"))

    async def dispatch_unqueued(self) -> None:
        """Loop step: push pending requests whose push after commit failed (or never ran)."""
        now = utcnow()
        async with self._db.sessions() as session:
            rows = (await session.execute(
                select(ParseRequest.id, ParseRequest.url, ParseRequest.owner_id)
                .where(ParseRequest.status == PENDING, ParseRequest.queued_at.is_(None),
                       ParseRequest.created_at < now - dt.timedelta(seconds=DISPATCH_GRACE),
                       ParseRequest.created_at > now - self._timeout)
                .order_by(ParseRequest.id).limit(DISPATCH_BATCH))).all()
        if rows:
            log.info("re-queueing %d parse requests whose push had failed", len(rows))
            await self._push(list(rows))

    async def expire_overdue(self) -> None:
        """Loop step: fail pending requests older than the timeout with error `timeout`."""
        deadline = utcnow() - self._timeout
        async with self._events.transaction() as tx:
            overdue = list((await tx.session.execute(
                select(ParseRequest.id).where(ParseRequest.status == PENDING,
                                              ParseRequest.created_at < deadline)
                .order_by(ParseRequest.id).limit(SWEEP_BATCH))).scalars())
            if overdue:
                views = await _finish(tx, overdue, status=PARSE_FAILURE, title=None,
                                      error="timeout", html=None)
                log.info("%d parse requests timed out", len(views))

    async def _push(self, jobs: Sequence[Job]) -> None:
        try:
            await self._queue.push(jobs)
        except QueueUnavailable as exc:
            log.warning("could not queue %d parse jobs, the dispatcher retries: %s", len(jobs), exc)
            return
        try:
            async with self._db.sessions.begin() as session:
                await _mark_queued(session, [request_id for request_id, _, _ in jobs])
        except Exception:
            # queued but not marked: the dispatcher may push it once more, which is harmless
            log.exception("could not mark %d parse jobs as queued", len(jobs))


async def _mark_queued(session: AsyncSession, request_ids: Sequence[int]) -> None:
    await session.execute(update(ParseRequest).where(ParseRequest.id.in_(request_ids))
                          .values(queued_at=utcnow()))


async def _finish(tx: Transaction, request_ids: Sequence[int], *, status: str, title: str | None,
                  error: str | None, html: str | None) -> list[ParseView]:
    """Finalize those of `request_ids` still pending and emit `parse.completed` for each."""
    rows = (await tx.session.execute(
        update(ParseRequest)
        .where(ParseRequest.id.in_(request_ids), ParseRequest.status == PENDING)
        .values(status=status, title=title, error=error, html=html, updated_at=utcnow())
        .returning(ParseRequest.id, ParseRequest.owner_id, ParseRequest.url,
                   ParseRequest.created_at, ParseRequest.updated_at))).all()
    views = [ParseView(request_id, owner_id, url, status, title, error, created_at, updated_at)
             for request_id, owner_id, url, created_at, updated_at in rows]
    # stream rows are locked in user-id order everywhere, or concurrent writers could deadlock
    for view in sorted(views, key=lambda v: (v.owner_id, v.request_id)):
        await tx.emit([view.owner_id], view.completed())
    return views
