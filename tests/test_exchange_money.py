"""Exchange arithmetic: exact decimals, half-up to the cent, breakdown checks (pure logic)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from hub.env import ConfigError
from parser_bridge.exchange import money
from parser_bridge.exchange_service import parse_delay


def order(rate: str, *bills: tuple[int, str, int]) -> money.ExchangeOrder:
    bills_text = ",".join(f'{{"denomination_id": {i}, "denomination": {d}, "count": {c}}}'
                          for i, d, c in bills)
    text = f'{{"exchange_rate": {rate}, "bills": [{bills_text}]}}'
    return money.ExchangeOrder.model_validate(money.loads_exact(text))


def test_seed_example_by_the_formula() -> None:
    # seed 002 prints 377.5 and 453.0: off by ten; the formula gives these
    subtotals = money.breakdown(order("75.5", (1, "10.0", 5), (2, "20.0", 3)))
    assert [(s.denomination_id, s.subtotal_rub) for s in subtotals] == [
        (1, Decimal("3775.00")), (2, Decimal("4530.00"))]
    assert money.total(subtotals) == Decimal("8305.00")


@pytest.mark.parametrize(("rate", "denomination", "count", "expected"), [
    ("0.125", "1", 1, "0.13"),          # half-up, not half-even
    ("0.135", "1", 1, "0.14"),
    ("1.005", "1", 1, "1.01"),          # 1.005 is below 1.005 as a binary float
    ("0.1", "0.1", 3, "0.03"),
    ("92.34567891", "0.01", 0, "0.00"),
    ("123456789.12345678", "999999999.999999", 1000000000, "123456789123456656543210876.54"),
])
def test_subtotals_are_exact_and_half_up(rate: str, denomination: str, count: int, expected: str) -> None:
    (subtotal,) = money.breakdown(order(rate, (7, denomination, count)))
    assert subtotal.subtotal_rub == Decimal(expected)
    assert orjson.dumps(money.breakdown_json([subtotal])) == (
        b'[{"denomination_id":7,"subtotal_rub":' + expected.encode() + b"}]")


def test_numbers_are_read_without_floats() -> None:
    parsed = money.loads_exact('{"a": 0.1000000000000000055511151231257827, "b": 3}')
    assert parsed == {"a": Decimal("0.1000000000000000055511151231257827"), "b": 3}
    for bad in ('{"a": NaN}', '{"a": Infinity}', "{"):
        with pytest.raises(ValueError):  # noqa: PT011
            money.loads_exact(bad)


@pytest.mark.parametrize("body", [
    '{"exchange_rate": 0, "bills": [{"denomination_id": 1, "denomination": 1, "count": 1}]}',
    '{"exchange_rate": -1, "bills": [{"denomination_id": 1, "denomination": 1, "count": 1}]}',
    '{"exchange_rate": 1.123456789, "bills": [{"denomination_id": 1, "denomination": 1, "count": 1}]}',
    '{"exchange_rate": 1, "bills": []}',
    '{"exchange_rate": 1, "bills": [{"denomination_id": 1, "denomination": 0, "count": 1}]}',
    '{"exchange_rate": 1, "bills": [{"denomination_id": 1, "denomination": 1, "count": -1}]}',
    '{"exchange_rate": 1, "bills": [{"denomination_id": 1, "denomination": 1, "count": 1.5}]}',
    '{"exchange_rate": 1, "bills": [{"denomination_id": 1, "denomination": 1, "count": true}]}',
    '{"exchange_rate": 1, "bills": [{"denomination_id": 1, "denomination": 1, "count": 1},'
    ' {"denomination_id": 1, "denomination": 2, "count": 1}]}',
    '{"exchange_rate": 1, "bills": [{"denomination_id": 1, "denomination": 1}]}',
    '{"exchange_rate": 1, "bills": [' + ",".join(
        f'{{"denomination_id": {n}, "denomination": 1, "count": 1}}' for n in range(101)) + "]}",
])
def test_bad_orders_are_refused(body: str) -> None:
    with pytest.raises(ValidationError):
        money.ExchangeOrder.model_validate(money.loads_exact(body))


def test_breakdown_is_checked_against_the_bills() -> None:
    wanted = order("75.5", (1, "10.0", 5), (2, "20.0", 3))

    def given(*items: tuple[int, str]) -> list[money.Subtotal]:
        return [money.Subtotal(denomination_id=i, subtotal_rub=Decimal(v)) for i, v in items]

    exact = money.check_breakdown(wanted, given((2, "4530.00"), (1, "3775.00")))
    assert [s.denomination_id for s in exact] == [1, 2]
    # a float-rounding service one cent off is accepted, and the exact value is kept
    assert money.check_breakdown(wanted, given((1, "3774.99"), (2, "4530.01")))[0].subtotal_rub == \
        Decimal("3775.00")
    for bad, problem in [
        (given((1, "3775.00")), "no subtotal for denomination_id 2"),
        (given((1, "3775.00"), (2, "4530.00"), (3, "1")), "3 is not in the request"),
        (given((1, "3775.00"), (1, "3775.00"), (2, "4530.00")), "appears twice"),
        (given((1, "377.50"), (2, "4530.00")), "expected 3775.00"),
    ]:
        with pytest.raises(money.BreakdownMismatch, match=problem):
            money.check_breakdown(wanted, bad)


def test_delay_setting() -> None:
    assert parse_delay("") == (1.0, 3.0)
    assert parse_delay("0.5") == (0.5, 0.5)
    assert parse_delay("0-0.2") == (0.0, 0.2)
    for bad in ("3-1", "-1", "a", "1-b", "99999"):
        with pytest.raises(ConfigError):
            parse_delay(bad)
