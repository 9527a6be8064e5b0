"""TokenBuckets (the in-process `Allow` of the chat's posting limit) on an injected clock."""

from __future__ import annotations

import pytest

from hub.token_buckets import TokenBuckets, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_the_rate_and_a_true_wait() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=5.0, burst=20, clock=clock)
    assert [buckets.take("a") for _ in range(20)] == [None] * 20
    wait = buckets.take("a")
    assert wait == pytest.approx(0.2)
    clock.now += 0.1
    assert buckets.take("a") == pytest.approx(0.1)  # a refused call spends nothing
    clock.now += 0.1
    assert buckets.take("a") is None  # exactly when promised
    assert buckets.take("a") == pytest.approx(0.2)
    clock.now += 1.0
    assert [buckets.take("a") for _ in range(5)] == [None] * 5
    assert buckets.take("a") is not None


def test_keys_are_independent() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [None, None, pytest.approx(1.0)]
    assert [buckets.take("b") for _ in range(2)] == [None, None]


def test_an_idle_key_is_forgotten_once_its_bucket_is_full_again() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=5.0, burst=20, clock=clock)
    for key in range(1000):
        assert buckets.take(str(key)) is None
    assert len(buckets) == 1000
    clock.now += 4.0  # burst / rate: every bucket has refilled
    assert buckets.take("new") is None
    assert len(buckets) == 1
    assert [buckets.take("0") for _ in range(20)] == [None] * 20  # a forgotten key starts full


def test_a_slow_rate_waits_whole_seconds() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=0.25, burst=1, clock=clock)
    assert buckets.take("a") is None
    clock.now += 1.5
    wait = buckets.take("a")
    assert wait == pytest.approx(2.5)
    assert wait is not None
    assert retry_after_header(wait) == 3
    clock.now += 3
    assert buckets.take("a") is None


def test_retry_after_header_rounds_up_and_is_at_least_one() -> None:
    assert retry_after_header(0.0001) == 1
    assert retry_after_header(0.2) == 1
    assert retry_after_header(1.0) == 1
    assert retry_after_header(1.0 + 1e-12) == 1  # float noise, not a real second more
    assert retry_after_header(1.01) == 2


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBuckets(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        TokenBuckets(rate=1, burst=0)


async def test_allow_is_the_async_interface() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock())
    assert await buckets.allow("k") is None
    assert await buckets.allow("k") == pytest.approx(1.0)
