"""Exchange arithmetic and its JSON, in exact decimals (protocol §8).

`subtotal_rub = denomination * count * exchange_rate`, rounded half-up to 2 places;
`total_rub` is the sum of the subtotals. Amounts are parsed from JSON text straight into
`Decimal` (never through a float) and written back as JSON numbers with the same digits.
The hub and `parser_bridge.exchange_service` share this module, so they agree to the cent.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from hub.http import only_json_type

CENT = Decimal("0.01")
MAX_BILLS = 100


def _json_number(value: Any) -> Any:
    """Amounts are JSON numbers (protocol §8): a string that pydantic would read as a Decimal
    is refused, as the OpenAPI document says."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


# pydantic describes a Decimal as "a number or a string"; only the number is accepted.
_number_schema = only_json_type("number")
_JSON_NUMBER = BeforeValidator(_json_number)
# bounds keep every product exact in a 60-digit context and every amount printable
Rate = Annotated[Decimal, Field(gt=0, le=Decimal(10) ** 9, decimal_places=8, json_schema_extra=_number_schema,
                                description="a JSON number; at most 8 decimal places"), _JSON_NUMBER]
Denomination = Annotated[Decimal, Field(gt=0, le=Decimal(10) ** 9, decimal_places=6,
                                        json_schema_extra=_number_schema,
                                        description="a JSON number; at most 6 decimal places"), _JSON_NUMBER]
Count = Annotated[int, Field(strict=True, ge=0, le=10**9)]
DenominationId = Annotated[int, Field(strict=True, ge=-(2**53), le=2**53)]
Money = Annotated[Decimal, Field(ge=0, le=Decimal(10) ** 30, json_schema_extra=_number_schema,
                                 description="a JSON number"), _JSON_NUMBER]


class Bill(BaseModel):
    model_config = ConfigDict(extra="ignore")
    denomination_id: DenominationId
    denomination: Denomination
    count: Count


class ExchangeOrder(BaseModel):
    """What a user asks for, and what the hub forwards to the exchange service (plus the id)."""

    model_config = ConfigDict(extra="forbid")
    exchange_rate: Rate
    bills: Annotated[list[Bill], Field(min_length=1, max_length=MAX_BILLS)]

    @model_validator(mode="after")
    def _distinct_ids(self) -> ExchangeOrder:
        ids = [bill.denomination_id for bill in self.bills]
        if len(set(ids)) != len(ids):
            raise ValueError("each bill needs its own denomination_id")
        return self


class Subtotal(BaseModel):
    model_config = ConfigDict(extra="ignore")
    denomination_id: DenominationId
    subtotal_rub: Money


def subtotal(bill: Bill, rate: Decimal) -> Decimal:
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        return (bill.denomination * bill.count * rate).quantize(CENT, rounding=ROUND_HALF_UP)


def breakdown(order: ExchangeOrder) -> list[Subtotal]:
    return [Subtotal(denomination_id=bill.denomination_id, subtotal_rub=subtotal(bill, order.exchange_rate))
            for bill in order.bills]


def total(subtotals: Iterable[Subtotal]) -> Decimal:
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        return sum((item.subtotal_rub for item in subtotals), Decimal("0.00"))


class BreakdownMismatch(ValueError):
    """The breakdown does not fit the request's bills; the message names the problem."""


def check_breakdown(order: ExchangeOrder, given: Sequence[Subtotal],
                    tolerance: Decimal = CENT) -> list[Subtotal]:
    """Our exact breakdown of `order` if `given` has one subtotal per bill, each within
    `tolerance` of the exact value (a service that rounds binary floats may be a cent off);
    raises BreakdownMismatch otherwise. The exact values are what the hub stores."""
    exact = {item.denomination_id: item for item in breakdown(order)}
    seen: set[int] = set()
    for item in given:
        if item.denomination_id not in exact:
            raise BreakdownMismatch(f"denomination_id {item.denomination_id} is not in the request")
        if item.denomination_id in seen:
            raise BreakdownMismatch(f"denomination_id {item.denomination_id} appears twice")
        seen.add(item.denomination_id)
        expected = exact[item.denomination_id].subtotal_rub
        if abs(item.subtotal_rub - expected) > tolerance:
            raise BreakdownMismatch(
                f"subtotal_rub of denomination_id {item.denomination_id} is {item.subtotal_rub}, "
                f"expected {expected}")
    missing = sorted(set(exact) - seen)
    if missing:
        raise BreakdownMismatch(f"no subtotal for denomination_id {missing[0]}")
    return [exact[bill.denomination_id] for bill in order.bills]


def number(value: Decimal) -> orjson.Fragment:
    """A JSON number with exactly the decimal's digits (orjson writes it verbatim)."""
    return orjson.Fragment(format(value, "f").encode("ascii"))


def bills_json(order: ExchangeOrder) -> list[dict[str, Any]]:
    return [{"denomination_id": b.denomination_id, "denomination": number(b.denomination),
             "count": b.count} for b in order.bills]


def breakdown_json(subtotals: Iterable[Subtotal]) -> list[dict[str, Any]]:
    """The breakdown as the contract writes it, amounts as exact JSON numbers."""
    return [{"denomination_id": s.denomination_id, "subtotal_rub": number(s.subtotal_rub)}
            for s in subtotals]


def loads_exact(body: bytes | str) -> Any:
    """Parse JSON keeping every non-integer number as an exact Decimal; ValueError if invalid
    (NaN and Infinity are refused too)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(body, parse_float=Decimal, parse_constant=refuse)
