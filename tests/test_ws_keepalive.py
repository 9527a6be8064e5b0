"""KeepaliveWheel, the one timer of every socket's keepalive (hub/ws_keepalive.py), on a real loop."""

from __future__ import annotations

import asyncio

from hub.ws_keepalive import SLOTS, KeepaliveWheel


class Socket:
    """Counts its turns; adds itself again each time (as a socket pinging does) until `rounds`."""

    def __init__(self, wheel: KeepaliveWheel, rounds: int, fail: bool = False) -> None:
        self.wheel = wheel
        self.rounds = rounds
        self.turns = 0
        self.fail = fail
        self.done = asyncio.get_running_loop().create_future()
        self.bucket = wheel.add(self)

    def keepalive(self) -> None:
        self.turns += 1
        if self.fail:
            raise RuntimeError("a socket's keepalive failing")
        if self.turns < self.rounds:
            self.bucket = self.wheel.add(self)
        elif not self.done.done():
            self.done.set_result(None)


async def test_each_socket_gets_its_turns_and_a_removed_one_none() -> None:
    wheel = KeepaliveWheel(0.05)
    sockets = [Socket(wheel, rounds=3) for _ in range(5)]
    removed = Socket(wheel, rounds=3)
    wheel.remove(removed, removed.bucket)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in sockets)), 10)
    assert [s.turns for s in sockets] == [3] * 5
    assert removed.turns == 0
    assert len(wheel) == 0


async def test_a_socket_added_while_the_wheel_turns_gets_its_turn() -> None:
    wheel = KeepaliveWheel(0.05)
    early = Socket(wheel, rounds=SLOTS + 1)
    while early.turns == 0:
        await asyncio.sleep(0.005)
    late = Socket(wheel, rounds=1)
    await asyncio.wait_for(early.done, 10)  # SLOTS more turns of the wheel: late's came in between
    assert late.turns == 1


async def test_a_failing_keepalive_stops_neither_the_others_nor_the_wheel() -> None:
    wheel = KeepaliveWheel(0.05)
    Socket(wheel, rounds=1, fail=True)
    healthy = Socket(wheel, rounds=2)
    await asyncio.wait_for(healthy.done, 10)
    assert healthy.turns == 2


async def test_the_timer_stops_when_no_socket_waits() -> None:
    wheel = KeepaliveWheel(0.05)
    one = Socket(wheel, rounds=1)
    await asyncio.wait_for(one.done, 10)
    assert wheel._handle is None
    again = Socket(wheel, rounds=1)  # and starts again with the next one
    await asyncio.wait_for(again.done, 10)
