"""The event of the exchange feature (protocol §5, §8), declared once: `ExchangeRequests` emits
it, the AsyncAPI document describes it, the browser client's name is compared with it by a test."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, WithJsonSchema

from hub.events import EventType

# Written as JSON numbers with their exact digits (a Decimal, never a float).
AmountOut = Annotated[Decimal, WithJsonSchema({"type": "number"})]


class SubtotalOut(BaseModel):
    denomination_id: int
    subtotal_rub: AmountOut


class ExchangeResult(BaseModel):
    """An exchange request became final; `total_rub` is null and `breakdown` empty when failed."""

    request_id: int
    status: Literal["completed", "failed"]
    breakdown: list[SubtotalOut]
    total_rub: AmountOut | None
    error: str | None


EXCHANGE_RESULT = EventType("exchange.result", ExchangeResult, "the user who asked")
