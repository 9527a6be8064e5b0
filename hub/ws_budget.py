"""What a WebSocket client may send: every frame it sends, of any kind, costs one token, and a
fragmented message has a bounded number of fragments.

`FrameBudget` finds where each client frame starts in the raw byte stream, from the frame headers
alone, so that a frame is counted before anything parses it: a flood of tiny frames (pings,
empty continuations, anything) costs the hub a few bytes of arithmetic per frame up to the
bound, and nothing after it, instead of a parse and an answer per frame.
"""

from __future__ import annotations

import time


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `take` never blocks."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class FrameBudget:
    """Counts the frames of one client's byte stream (RFC 6455 §5.2 headers) against a bucket,
    and the fragments of the message in progress against `max_fragments`."""

    __slots__ = ("_bucket", "_fragments", "_head", "_left", "_max_fragments", "too_fragmented")

    def __init__(self, rate: float, burst: int, max_fragments: int) -> None:
        self._bucket = TokenBucket(rate, burst)
        self._max_fragments = max_fragments
        self._fragments = 0  # frames of the fragmented message in progress
        self._head = b""  # the start of a frame header split across reads
        self._left = 0  # bytes of the current frame still to come
        self.too_fragmented = False  # why `admit` stopped: else the frame rate

    def admit(self, data: bytes) -> int:
        """How many leading bytes of `data` are within bounds: `len(data)`, or the offset of
        the first frame over the rate or the fragment bound (everything from there on must be
        dropped, the socket closed). The start of a header split across reads is let through
        before that frame is judged: at most 13 bytes that never make a frame."""
        size = len(data)
        at = 0
        while at < size:
            if self._left:
                step = min(self._left, size - at)
                self._left -= step
                at += step
                continue
            head = self._head + data[at:at + 14] if self._head else data[at:at + 14]
            length = _frame_length(head)
            if length is None:  # the header is not all here yet: the next read completes it
                self._head = head
                return size
            if not self._count_fragment(head[0]) or not self._bucket.take():
                return max(0, at - len(self._head))
            self._left = length - len(self._head)
            self._head = b""
        return size

    def _count_fragment(self, first: int) -> bool:
        """Follow the fragmented message in progress given a frame's first byte (FIN, opcode);
        False when this frame is one fragment too many."""
        fin, opcode = first & 0x80, first & 0x0F
        if opcode in (0x1, 0x2):  # text, binary: a message starts
            self._fragments = 0 if fin else 1
        elif opcode == 0x0 and self._fragments:  # a continuation of it
            if self._fragments == self._max_fragments:
                self.too_fragmented = True
                return False
            self._fragments = 0 if fin else self._fragments + 1
        return True


def _frame_length(head: bytes) -> int | None:
    """The whole length (header and payload) of the frame `head` starts, or None while its
    header is incomplete."""
    if len(head) < 2:
        return None
    second = head[1]
    length, header = second & 0x7F, 2
    if length == 126:
        if len(head) < 4:
            return None
        length, header = int.from_bytes(head[2:4], "big"), 4
    elif length == 127:
        if len(head) < 10:
            return None
        length, header = int.from_bytes(head[2:10], "big"), 10
    if second & 0x80:
        header += 4  # the masking key
    return header + length
