"""FrameBudget, the frame counter in front of the WebSocket parser (pure logic)."""

from __future__ import annotations

import random

import pytest

from hub.ws_budget import FrameBudget
from tests.wsutil import client_frame

FRAMES = [client_frame(0x1, b"x" * size) for size in (0, 1, 125, 126, 200, 65535, 65536, 70000)]
FRAMES += [client_frame(0x9, b"p"), client_frame(0xA, b""), client_frame(0x2, b"y" * 3, masked=False)]


def _feed(budget: FrameBudget, stream: bytes, rng: random.Random) -> int:
    """Feed `stream` in random pieces (a header may split anywhere); the bytes admitted."""
    admitted, at = 0, 0
    while at < len(stream):
        piece = stream[at:at + rng.choice([1, 2, 3, 7, 100, 5000, 100_000])]
        taken = budget.admit(piece)
        admitted += taken
        if taken < len(piece):
            return admitted
        at += len(piece)
    return admitted


@pytest.mark.parametrize("seed", range(20))
def test_frames_are_found_however_the_stream_is_split(seed: int) -> None:
    rng = random.Random(seed)
    frames = [rng.choice(FRAMES) for _ in range(30)]
    stream = b"".join(frames)
    assert _feed(FrameBudget(1e-9, 30, 16), stream, rng) == len(stream)
    allowed = rng.randrange(1, 30)
    budget = FrameBudget(1e-9, allowed, 16)  # refills nothing within the test
    within = len(b"".join(frames[:allowed]))
    assert within <= _feed(budget, stream, rng) < within + 14  # (the start of a split header passes)
    assert not budget.too_fragmented


def test_a_message_may_take_at_most_max_fragments_frames() -> None:
    start, more = client_frame(0x1, b"a", fin=False), client_frame(0x0, b"b", fin=False)
    last = client_frame(0x0)
    ping = client_frame(0x9)
    whole = start + (more + ping) * 2 + last  # 4 fragments; pings between them do not count as such
    budget = FrameBudget(1e-9, 1000, 4)
    assert budget.admit(whole * 3) == len(whole) * 3
    budget = FrameBudget(1e-9, 1000, 3)
    assert budget.admit(whole) == len(start + (more + ping) * 2)
    assert budget.too_fragmented
