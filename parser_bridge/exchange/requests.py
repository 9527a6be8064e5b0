"""Exchange requests: stored, handed to the exchange service by a supervised loop, completed
once by the service's callback (protocol §8).

`forward_due` sends each due request to `EXCHANGE_SERVICE_URL/api/exchange_async`, retrying
with jittered exponential back-off; when the service stays unreachable for `retry_window`
seconds (about a minute) the request fails and the owner gets `exchange.result` with the
error. A request handed over but never answered fails after `RESULT_WAIT`. Each attempt is
claimed with a conditional update (a lease on `next_attempt_at`), so several hub processes
never send the same attempt twice. `complete` applies the callback: first result wins, with
`exchange.result` in the same transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update

from hub.db import Database, utcnow
from hub.events import Event, EventBus, Transaction
from hub.storable_text import clean
from parser_bridge.exchange import money
from parser_bridge.exchange.events import EXCHANGE_RESULT, ExchangeResult
from parser_bridge.exchange.models import EXCHANGE_COMPLETED, EXCHANGE_FAILED, PENDING, ExchangeRequest

log = logging.getLogger("parser_bridge.exchange")
MAX_DB_ID = 2**31 - 1
CLAIM_LEASE = dt.timedelta(seconds=30)  # longer than one attempt can take
RESULT_WAIT = dt.timedelta(minutes=10)
SEND_TIMEOUT = 5.0
BATCH = 100
PARALLEL_SENDS = 10


class UnknownRequest(Exception):
    pass


class AlreadyFinal(Exception):
    pass


@dataclass(frozen=True)
class ExchangeView:
    request_id: int
    owner_id: int
    status: str
    breakdown: list[money.Subtotal]
    total_rub: Decimal | None
    error: str | None

    def result(self) -> Event:
        """The `exchange.result` event of a final request (validated: the status is final)."""
        return EXCHANGE_RESULT(ExchangeResult.model_validate(
            {"request_id": self.request_id, "status": self.status,
             "breakdown": [item.model_dump() for item in self.breakdown],
             "total_rub": self.total_rub, "error": self.error}))

    def to_json(self) -> dict[str, Any]:
        """The contract's object; amounts are exact JSON numbers, `total_rub` null until done."""
        return {"request_id": self.request_id, "status": self.status,
                "breakdown": money.breakdown_json(self.breakdown),
                "total_rub": None if self.total_rub is None else money.number(self.total_rub),
                "error": self.error}


def _view(row: ExchangeRequest) -> ExchangeView:
    items = [money.Subtotal.model_validate(item) for item in money.loads_exact(row.breakdown or "[]")]
    total = Decimal(row.total_rub) if row.total_rub is not None else None
    return ExchangeView(row.id, row.owner_id, row.status, items, total, row.error)


def _order(row: ExchangeRequest) -> money.ExchangeOrder:
    return money.ExchangeOrder.model_validate(
        {"exchange_rate": Decimal(row.exchange_rate), "bills": money.loads_exact(row.bills)})


class ExchangeRequests:
    """The exchange request service. `service_url` is EXCHANGE_SERVICE_URL (None: not offered),
    `service_token` is sent to it as a bearer token."""

    def __init__(self, db: Database, events: EventBus, service_url: str | None,
                 service_token: str | None, retry_window: float, *, retry_base: float = 0.5,
                 retry_cap: float = 10.0) -> None:
        self._db = db
        self._events = events
        self._endpoint = None if service_url is None else service_url.rstrip("/") + "/api/exchange_async"
        self._token = service_token
        self._window = dt.timedelta(seconds=retry_window)
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self.wake = asyncio.Event()

    @property
    def offered(self) -> bool:
        return self._endpoint is not None

    async def submit(self, owner_id: int, order: money.ExchangeOrder) -> ExchangeView:
        now = utcnow()
        async with self._db.sessions.begin() as session:
            row = ExchangeRequest(
                owner_id=owner_id, exchange_rate=format(order.exchange_rate, "f"),
                bills=orjson.dumps(money.bills_json(order)).decode(),
                status=PENDING, attempts=0, next_attempt_at=now, created_at=now, updated_at=now)
            session.add(row)
            await session.flush()
            view = _view(row)
        self.wake.set()
        return view

    async def get(self, owner_id: int, request_id: int) -> ExchangeView | None:
        if not 0 < request_id <= MAX_DB_ID:
            return None
        async with self._db.sessions() as session:
            row = await session.get(ExchangeRequest, request_id)
            return _view(row) if row is not None and row.owner_id == owner_id else None

    async def complete(self, request_id: int, given: Sequence[money.Subtotal]) -> ExchangeView:
        """Apply the service's breakdown; raises UnknownRequest, AlreadyFinal, or
        money.BreakdownMismatch when it does not fit the request's bills."""
        if not 0 < request_id <= MAX_DB_ID:
            raise UnknownRequest(request_id)
        async with self._events.transaction() as tx:
            row = await tx.session.get(ExchangeRequest, request_id)
            if row is None:
                raise UnknownRequest(request_id)
            if row.status != PENDING:
                raise AlreadyFinal(request_id)
            exact = money.check_breakdown(_order(row), given)
            total = money.total(exact)
            stored = orjson.dumps(money.breakdown_json(exact)).decode()
            view = await _finish(tx, row.id, row.owner_id, EXCHANGE_COMPLETED, exact, total, None,
                                 breakdown_text=stored)
            if view is None:
                raise AlreadyFinal(request_id)
        return view

    async def forward_due(self) -> None:
        """Loop step: hand every due request to the exchange service (several at once)."""
        if self._endpoint is None:
            return
        try:
            async with asyncio.timeout(0.5):
                await self.wake.wait()
        except TimeoutError:
            pass
        self.wake.clear()
        now = utcnow()
        async with self._db.sessions() as session:
            due = (await session.execute(
                select(ExchangeRequest.id, ExchangeRequest.next_attempt_at)
                .where(ExchangeRequest.status == PENDING, ExchangeRequest.next_attempt_at <= now)
                .order_by(ExchangeRequest.next_attempt_at).limit(BATCH))).all()
        if not due:
            return
        limit = asyncio.Semaphore(PARALLEL_SENDS)
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT, trust_env=False) as client:

            async def attempt(request_id: int, seen: dt.datetime) -> None:
                async with limit:
                    await self._attempt(client, request_id, seen)

            await asyncio.gather(*(attempt(i, seen) for i, seen in due if seen is not None))

    async def _attempt(self, client: httpx.AsyncClient, request_id: int, seen: dt.datetime) -> None:
        now = utcnow()
        async with self._db.sessions.begin() as session:
            claimed = await session.execute(
                update(ExchangeRequest)
                .where(ExchangeRequest.id == request_id, ExchangeRequest.status == PENDING,
                       ExchangeRequest.next_attempt_at == seen)
                .values(next_attempt_at=now + CLAIM_LEASE)
                .returning(ExchangeRequest.attempts, ExchangeRequest.created_at,
                           ExchangeRequest.forwarded_at, ExchangeRequest.exchange_rate,
                           ExchangeRequest.bills))
            row = claimed.first()
        if row is None:
            return  # another process claimed it, or it became final
        attempts, created_at, forwarded_at, rate, bills = row
        if forwarded_at is not None:
            await self._fail(request_id, "the exchange service did not send a result in time")
            return
        payload = orjson.dumps({"request_id": request_id, "exchange_rate": orjson.Fragment(rate.encode()),
                                "bills": orjson.Fragment(bills.encode())})
        error = await self._send(client, payload)
        now = utcnow()
        if error is None:
            await self._set_next(request_id, attempts + 1, now + RESULT_WAIT, forwarded_at=now)
            return
        delay = min(self._retry_cap, self._retry_base * 2 ** attempts) * random.uniform(0.75, 1.25)  # noqa: S311
        permanent = error.startswith("refused")
        if permanent or now + dt.timedelta(seconds=delay) > created_at + self._window:
            log.warning("exchange request %d failed after %d attempts: %s", request_id,
                        attempts + 1, error)
            await self._fail(request_id, error if permanent
                             else f"the exchange service is unreachable: {error}")
            return
        log.info("exchange request %d: attempt %d failed (%s); retrying in %.1fs", request_id,
                 attempts + 1, error, delay)
        await self._set_next(request_id, attempts + 1, now + dt.timedelta(seconds=delay))

    async def _send(self, client: httpx.AsyncClient, payload: bytes) -> str | None:
        """None when the service accepted the request, else why not (`refused...` if retrying
        cannot help)."""
        assert self._endpoint is not None
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = await client.post(self._endpoint, content=payload, headers=headers)
        except httpx.TimeoutException:
            return "timed out"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        if 200 <= response.status_code < 300:
            return None
        if 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429):
            return f"refused by the exchange service: HTTP {response.status_code}"
        return f"HTTP {response.status_code}"

    async def _set_next(self, request_id: int, attempts: int, next_at: dt.datetime,
                        forwarded_at: dt.datetime | None = None) -> None:
        values: dict[str, Any] = {"attempts": attempts, "next_attempt_at": next_at, "updated_at": utcnow()}
        if forwarded_at is not None:
            values["forwarded_at"] = forwarded_at
        async with self._db.sessions.begin() as session:
            await session.execute(update(ExchangeRequest)
                                  .where(ExchangeRequest.id == request_id,
                                         ExchangeRequest.status == PENDING).values(**values))

    async def _fail(self, request_id: int, error: str) -> None:
        async with self._events.transaction() as tx:
            row = await tx.session.get(ExchangeRequest, request_id)
            if row is not None and row.status == PENDING:
                # the error may quote the exchange service's answer: third-party text
                await _finish(tx, request_id, row.owner_id, EXCHANGE_FAILED, [], None, clean(error))


async def _finish(tx: Transaction, request_id: int, owner_id: int, status: str,
                  subtotals: list[money.Subtotal], total: Decimal | None, error: str | None,
                  breakdown_text: str | None = None) -> ExchangeView | None:
    """Make the request final if still pending and emit `exchange.result`; None if it was not."""
    done = await tx.session.execute(
        update(ExchangeRequest)
        .where(ExchangeRequest.id == request_id, ExchangeRequest.status == PENDING)
        .values(status=status, breakdown=breakdown_text, error=error, next_attempt_at=None,
                total_rub=None if total is None else format(total, "f"), updated_at=utcnow())
        .returning(ExchangeRequest.id))
    if done.first() is None:
        return None
    view = ExchangeView(request_id, owner_id, status, subtotals, total, error)
    await tx.emit([owner_id], view.result())
    return view
