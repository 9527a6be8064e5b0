"""A connection's outbound side (`hub.connection.Connection`) on its own: ordering, dropping what
was delivered, gap fills from the store, catch-up after a broker reconnect, the bounded queue
and socket buffer (slow consumer), token expiry. Pure logic: an in-memory outlet and store, an
injected clock, no network; every race is played step by step instead of provoked with sleeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub import connection as connection_module
from hub.connection import (
    Connection,
    DeliveryFailed,
    SessionRevoked,
    SlowConsumer,
    StreamGap,
    TokenExpired,
    event_frame,
)
from hub.metrics import Metrics
from tests.in_memory import NOW, USER, Outlet, Store, payload

WAIT = 5.0


def make(store: Store | None = None, *, max_messages: int = 100, max_bytes: int = 1 << 20,
         clock: float = NOW, metrics: Metrics | None = None) -> tuple[Connection, Outlet, Store]:
    outlet, store = Outlet(), store or Store()
    conn = Connection(USER, NOW + 3600, outlet, store.read, metrics or Metrics(), max_messages, max_bytes,
                      "session", clock=lambda: clock)
    return conn, outlet, store


def offer(conn: Connection, *ids: int) -> None:
    for i in ids:
        conn.offer(i, event_frame(payload(i)), NOW - 1)


async def settled(conn: Connection) -> None:
    """Until the connection's catch-up task (if any) has finished."""
    async with asyncio.timeout(WAIT):
        while conn._task is not None:
            await asyncio.sleep(0)


async def test_the_next_live_events_are_written_at_once_in_order_without_a_task() -> None:
    conn, outlet, store = make()
    conn.start_at(0)
    offer(conn, 1, 2, 3)
    assert outlet.ids == [1, 2, 3]  # synchronously, from the broker's callback
    assert conn._task is None and store.reads == [] and conn.delivered == 3


async def test_ids_at_or_below_the_last_delivered_are_dropped() -> None:
    conn, outlet, _ = make()
    conn.start_at(5)  # the welcome said last_event_id 5
    offer(conn, 3, 5, 6, 6, 4, 7)  # a relay republishing, a broker repeating
    await settled(conn)
    assert outlet.ids == [6, 7]


async def test_an_id_that_skips_ahead_is_preceded_by_the_missing_ones_from_the_store() -> None:
    conn, outlet, store = make(Store([1, 2, 3, 4]))
    conn.start_at(0)
    offer(conn, 1, 4)  # 2 and 3 committed but never published (a process died in between)
    assert outlet.ids == [1]
    await settled(conn)
    assert outlet.ids == [1, 2, 3, 4]
    assert store.reads == [(1, connection_module.FILL_PAGE, 3)]


async def test_live_events_offered_during_a_fill_wait_in_order_and_none_is_sent_twice() -> None:
    store = Store([1, 2, 3])
    store.gate.clear()
    conn, outlet, _ = make(store)
    conn.start_at(0)
    offer(conn, 3)
    await asyncio.sleep(0)  # the task reads the store and waits at the gate
    offer(conn, 2, 4, 5, 3)  # while it waits: two it is about to read, two after it
    assert outlet.ids == []
    store.gate.set()
    await settled(conn)
    assert outlet.ids == [1, 2, 3, 4, 5]
    offer(conn, 6)
    assert outlet.ids[-1] == 6 and conn._task is None  # back to writing at once


async def test_missing_events_no_longer_in_the_store_end_the_connection_with_a_stream_gap() -> None:
    conn, outlet, _ = make(Store([1, 4]))  # 2 and 3 removed by retention
    conn.start_at(1)
    offer(conn, 4)
    await settled(conn)
    assert outlet.ids == []
    (reason,) = outlet.reasons
    assert isinstance(reason, StreamGap) and "2..3" in str(reason)


async def test_a_replay_that_finds_its_first_event_trimmed_is_a_stream_gap() -> None:
    conn, outlet, _ = make(Store(range(5, 11)))
    conn.start_at(2, replay_to=10)  # the resume point checked out, then retention ran
    await settled(conn)
    assert outlet.ids == []
    assert isinstance(outlet.reasons[0], StreamGap) and "3..4" in str(outlet.reasons[0])


async def test_a_replay_goes_up_to_its_target_in_pages_then_whatever_was_offered_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "FILL_PAGE", 4)
    conn, outlet, store = make(Store(range(1, 11)))
    conn.start_at(0, replay_to=9)  # the head at the welcome; 10 committed after it
    offer(conn, 10, 11)
    store.add(11)
    await settled(conn)
    assert outlet.ids == list(range(1, 12))
    assert store.reads == [(0, 4, 9), (4, 4, 9), (8, 4, 9)]


async def test_catch_up_after_a_broker_reconnect_reads_everything_new() -> None:
    conn, outlet, store = make(Store([1]))
    conn.start_at(0)
    offer(conn, 1)
    store.add(2, 3, 4)  # published while the broker was away: nothing offered
    conn.catch_up()
    await settled(conn)
    assert outlet.ids == [1, 2, 3, 4]
    assert store.reads[-1] == (1, connection_module.FILL_PAGE, None)
    offer(conn, 4, 5)
    assert outlet.ids == [1, 2, 3, 4, 5]


async def test_nothing_is_written_before_the_start_and_what_was_offered_follows_it() -> None:
    conn, outlet, _ = make(Store([4, 5, 6]))
    offer(conn, 5, 6)  # registered, the welcome not yet out
    assert outlet.ids == [] and conn._task is None
    conn.start_at(4)
    await settled(conn)
    assert outlet.ids == [5, 6]


async def test_a_queue_over_its_count_ends_the_connection_as_a_slow_consumer() -> None:
    store = Store([1])
    store.gate.clear()
    conn, outlet, _ = make(store, max_messages=3)
    conn.start_at(0)
    offer(conn, 2)  # a gap: the task takes it and reads the store, held at the gate
    await asyncio.sleep(0)
    offer(conn, 3, 4, 5)
    assert outlet.reasons == []
    offer(conn, 6)  # the fourth waiting event
    (reason,) = outlet.reasons
    assert isinstance(reason, SlowConsumer)
    store.gate.set()
    await asyncio.sleep(0)
    offer(conn, 7)
    assert outlet.ids == [] and len(outlet.reasons) == 1  # ended for good, told once


async def test_a_queue_over_its_bytes_ends_the_connection_as_a_slow_consumer() -> None:
    store = Store()
    store.gate.clear()
    frame_size = len(event_frame(payload(2)))
    conn, outlet, _ = make(store, max_bytes=2 * frame_size)
    conn.start_at(0)
    offer(conn, 2, 3)
    assert outlet.reasons == []
    offer(conn, 4)
    assert isinstance(outlet.reasons[0], SlowConsumer)
    conn.stop()


async def test_a_socket_that_keeps_too_many_frames_unsent_is_a_slow_consumer() -> None:
    conn, outlet, _ = make(max_messages=3)
    conn.start_at(0)
    outlet.backlog = 100
    offer(conn, 1, 2, 3)
    assert outlet.reasons == []
    outlet.backlog = 0  # the socket caught up: the count starts again
    offer(conn, 4)
    outlet.backlog = 100
    offer(conn, 5, 6, 7)
    assert outlet.reasons == []
    offer(conn, 8)
    assert outlet.ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert isinstance(outlet.reasons[0], SlowConsumer)


async def test_a_socket_buffer_over_its_bytes_is_a_slow_consumer() -> None:
    conn, outlet, _ = make(max_bytes=1000)
    conn.start_at(0)
    outlet.backlog = 1001
    offer(conn, 1)
    assert isinstance(outlet.reasons[0], SlowConsumer)


async def test_a_fill_waits_for_the_socket_to_drain_before_each_event() -> None:
    conn, outlet, _ = make(Store(range(1, 6)))
    outlet.writable.clear()  # the transport paused writing
    conn.start_at(0, replay_to=5)
    for _ in range(10):
        await asyncio.sleep(0)
    assert outlet.ids == [] and outlet.drains == 1
    outlet.writable.set()
    await settled(conn)
    assert outlet.ids == [1, 2, 3, 4, 5] and outlet.drains == 5


async def test_a_failing_store_read_ends_the_connection_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    store.fail = RuntimeError("database gone")
    conn, outlet, _ = make(store)
    conn.start_at(0)
    offer(conn, 2)
    await settled(conn)
    assert isinstance(outlet.reasons[0], DeliveryFailed)
    assert any(r.levelno == logging.ERROR and "user 7" in r.getMessage() for r in caplog.records)


async def test_stop_writes_nothing_more_cancels_the_fill_and_tells_nobody() -> None:
    store = Store([1, 2])
    store.gate.clear()
    conn, outlet, _ = make(store)
    conn.start_at(0)
    offer(conn, 2)
    await asyncio.sleep(0)
    task = conn._task
    conn.stop()
    store.gate.set()
    offer(conn, 3)
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    assert outlet.ids == [] and outlet.reasons == []


async def test_the_token_expiry_is_read_on_the_injected_clock_and_rearmed_by_a_refresh() -> None:
    conn, outlet, _ = make(clock=NOW)
    conn.start_at(0)
    conn.set_expiry(NOW + 3600)
    conn.set_expiry(NOW - 1)  # a refresh re-arms; this one is already past
    async with asyncio.timeout(WAIT):
        while not outlet.reasons:
            await asyncio.sleep(0)
    (reason,) = outlet.reasons
    assert isinstance(reason, TokenExpired)
    offer(conn, 1)
    assert outlet.ids == []

    conn, outlet, _ = make(clock=NOW)
    conn.set_expiry(NOW - 1)
    conn.set_expiry(NOW + 3600)  # refreshed in time: the earlier timer is cancelled
    for _ in range(5):
        await asyncio.sleep(0)
    assert outlet.reasons == [] and conn.expires_at == NOW + 3600
    conn.stop()


async def test_a_token_expiring_beyond_the_horizon_arms_no_timer_until_watched_within_it() -> None:
    clock = [NOW]
    outlet = Outlet()
    conn = Connection(USER, NOW + 3600, outlet, Store().read, Metrics(), 100, 1 << 20, clock=lambda: clock[0])
    conn.start_at(0)
    conn.set_expiry(NOW + 100, within=40)  # expires beyond the horizon: nothing armed
    assert conn._expiry is None
    conn.watch_expiry(40)  # a keepalive turn, still too early
    assert conn._expiry is None
    clock[0] = NOW + 101  # within the horizon now (past, so the timer is due at once): armed
    conn.watch_expiry(40)
    async with asyncio.timeout(WAIT):
        while not outlet.reasons:
            await asyncio.sleep(0)
    (reason,) = outlet.reasons
    assert isinstance(reason, TokenExpired)
    conn.watch_expiry(40)  # ended: never armed again
    assert conn._expiry is None


async def test_revoke_ends_the_connection_once() -> None:
    conn, outlet, _ = make()
    conn.start_at(0)
    conn.revoke()
    conn.revoke()
    assert [type(r) for r in outlet.reasons] == [SessionRevoked]


async def test_delivery_latency_is_measured_on_the_injected_clock() -> None:
    metrics = Metrics()
    conn, _outlet, _ = make(clock=NOW + 0.25, metrics=metrics)
    conn.start_at(0)
    conn.offer(1, event_frame(payload(1)), NOW)
    assert metrics.deliveries.total_sum == pytest.approx(0.25)
