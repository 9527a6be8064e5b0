"""A WebSocket frame fuzzer against a real hub: random and malformed frames (bad opcodes, reserved
bits, unmasked, oversized or lying lengths, fragmented control frames, truncated frames, random
bytes, hostile JSON, close frames of every shape), before and after auth. However a socket is
abused, the hub logs no error, answers /healthz, keeps delivering another user's events, and
every fuzzed socket ends within a bound.

A fixed-seed phase runs first; a time-bounded phase follows with a fresh seed, printed on failure
(FUZZ_SEED=<seed> replays it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, replace

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from hub.settings import Settings
from hub.ws_socket import CLOSE_GRACE
from tests.conftest import RunningHub, serve_hub
from tests.wsutil import client_frame, connect, make_users, publish_to, raw_socket

FIXED_SEED = 20261207
FIXED_CASES = 48
RANDOM_PHASE_SECONDS = 6.0
PARALLEL = 6
AUTH_TIMEOUT = 1.0
END_BOUND = AUTH_TIMEOUT + CLOSE_GRACE + 6.0  # from the last byte sent to the connection's end
SLOW = 2.0  # what counts as a slow /healthz or event delivery while fuzzing

JSON_FRAMES = [
    b'{"type":"ping"}', b'{"type":"refresh","token":"x"}', b'{"type":"refresh"}', b'{"type":"auth"}',
    b'{"type":"auth","token":"a.b.c"}', b'{"type":"auth","token":"t","last_event_id":-1}',
    b'{"type":"auth","token":"t","last_event_id":1e309}', b'{"type":"auth","token":"t","epoch":[]}',
    b'{"type":"typing","chat_id":1}', b"[]", b"null", b'"ping"', b"{", b"\xff\xfe", b"{}" * 2000,
    b'{"type":"' + b"\xc3\x28" + b'"}', b'{"type":"ping","pad":"' + b"x" * 4090 + b'"}',
    b'{"a":' * 500 + b"1" + b"}" * 500,
]


@dataclass
class Case:
    seed: int
    authenticate: bool
    chunks: list[bytes]
    eof: bool  # half-close after sending


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _piece(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:  # any opcode, any flags, a short payload
        return client_frame(rng.randrange(16), rng.randbytes(rng.randrange(0, 40)), fin=rng.random() < 0.7,
                            rsv=rng.randrange(8) if rng.random() < 0.3 else 0, masked=rng.random() < 0.9)
    if kind == 1:  # a length that lies or is huge
        declared = rng.choice([126, 4097, 65535, 65536, 2**31, 2**63 - 1, rng.randrange(200)])
        return client_frame(rng.choice([0x1, 0x2, 0x9, 0x0]), rng.randbytes(rng.randrange(0, 64)),
                            length=declared, masked=rng.random() < 0.9)
    if kind == 2:  # a fragmented control frame
        return client_frame(rng.choice([0x8, 0x9, 0xA]), rng.randbytes(rng.randrange(0, 10)), fin=False)
    if kind == 3:  # a truncated frame: its header alone, or part of it
        frame = client_frame(0x1, rng.randbytes(rng.randrange(1, 300)))
        return frame[:rng.randrange(1, min(len(frame), 10))]
    if kind == 4:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 5:  # a fragmented message, sometimes never finished or too long
        parts = [client_frame(0x1, b'{"type":', fin=False)]
        parts += [client_frame(0x0, rng.randbytes(rng.randrange(0, 300)), fin=False)
                  for _ in range(rng.randrange(0, 30))]
        if rng.random() < 0.5:
            parts.append(client_frame(0x0, b'"ping"}'))
        return b"".join(parts)
    if kind == 6:  # a close frame of any shape
        payload = rng.choice([b"", b"\x03", b"\x03\xe8", b"\x03\xe8bye", b"\x00\x00", b"\x0f\xa1",
                              b"\x03\xe8\xff\xfe", rng.randbytes(rng.randrange(0, 125))])
        return client_frame(0x8, payload)
    if kind == 7:  # a flood of tiny frames
        tiny = client_frame(rng.choice([0x9, 0xA, 0x0]), b"", fin=rng.random() < 0.5)
        return tiny * rng.randrange(50, 3000)
    if kind == 8:  # a ping of the largest legal size and one over it
        return client_frame(0x9, rng.randbytes(rng.choice([125, 126])))
    if kind == 9:  # valid or hostile JSON, as text or binary
        return client_frame(rng.choice([0x1, 0x2]), rng.choice(JSON_FRAMES))
    if kind == 10:  # a valid frame's bytes with one bit flipped
        frame = bytearray(client_frame(0x1, b'{"type":"ping"}'))
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame)
    return client_frame(0x1, b'{"type":"ping"}')


def _case(rng: random.Random, seed: int) -> Case:
    chunks = [_piece(rng) for _ in range(rng.randrange(1, 12))]
    return Case(seed, rng.random() < 0.5, chunks, rng.random() < 0.3)


async def _run_case(hub: RunningHub, token: str, case: Case) -> str | None:
    """Play `case` on a new socket; a sentence saying what went wrong, or None."""
    reader, writer = await raw_socket(hub)
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    frames: list[Frame] = []

    async def read_some() -> bool:
        try:
            data = await reader.read(65536)
        except ConnectionError:
            return False
        if not data:
            return False
        client.receive_data(data)
        frames.extend(e for e in client.events_received() if isinstance(e, Frame))
        return True

    async def ended(seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                while await read_some():
                    pass
        except TimeoutError:
            return False
        return True

    try:
        if case.authenticate:
            writer.write(client_frame(0x1, json.dumps({"type": "auth", "token": token}).encode()))
            async with asyncio.timeout(10):
                while not any(f.opcode is Opcode.TEXT for f in frames):
                    if not await read_some():
                        return f"seed {case.seed}: closed before the welcome"
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(3):
                for chunk in case.chunks:
                    writer.write(chunk)
                    await writer.drain()
                if case.eof:
                    writer.write_eof()
        if not await ended(1.5 if case.authenticate and not case.eof else END_BOUND):
            if any(f.opcode is Opcode.CLOSE for f in frames):
                if not await ended(END_BOUND):
                    return f"seed {case.seed}: the hub sent a close frame but kept the connection"
            elif not case.authenticate or case.eof:
                return f"seed {case.seed}: the connection did not end within {END_BOUND} s"
            else:  # an authenticated socket may live on (a frame may be half sent): it ends when told
                with contextlib.suppress(ConnectionError):
                    writer.write(client_frame(0x8, b"\x03\xe8"))
                    writer.write_eof()
                if not await ended(5):
                    return f"seed {case.seed}: a closed socket did not end within 5 s"
        return None
    finally:
        writer.close()


async def _watch(hub: RunningHub, user_id: int, token: str, stop: asyncio.Event) -> list[str]:
    """While fuzzing: /healthz and a live event to another user's socket, each within SLOW."""
    victim = await connect(hub.ws_url, token)
    problems: list[str] = []
    n = 0
    while not stop.is_set():
        n += 1
        began = time.monotonic()
        try:
            async with asyncio.timeout(10):
                health = await hub.http.get("/healthz")
                await publish_to(hub, [user_id], data={"n": n})
                (event,) = await victim.events(1)
        except TimeoutError:
            problems.append(f"round {n}: no /healthz answer or event within 10 s")
            break
        took = time.monotonic() - began
        if health.status_code != 200 or event["data"] != {"n": n} or took > SLOW:
            problems.append(f"round {n}: /healthz {health.status_code}, event {event}, {took:.2f} s")
        await asyncio.sleep(0.2)
    await victim.close()
    return problems


async def test_fuzzed_frames_never_hurt_the_hub(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with serve_hub(replace(settings, ws_auth_timeout=AUTH_TIMEOUT)) as hub:
        users = await make_users(hub.settings, 3)
        (victim_id, victim_token), *fuzzers = users
        stop = asyncio.Event()
        watching = asyncio.create_task(_watch(hub, victim_id, victim_token, stop))
        random_seed = int(os.environ.get("FUZZ_SEED", time.time_ns() % 2**32))
        fixed = random.Random(FIXED_SEED)
        cases = [_case(random.Random(fixed.getrandbits(32)), FIXED_SEED * 1000 + i)
                 for i in range(FIXED_CASES)]
        randomized = random.Random(random_seed)
        slots = asyncio.Semaphore(PARALLEL)
        problems: list[str] = []
        deadline = time.monotonic() + RANDOM_PHASE_SECONDS + 10

        async def play(case: Case, index: int) -> None:
            async with slots:
                _, token = fuzzers[index % len(fuzzers)]
                result = await _run_case(hub, token, case)
                if result:
                    problems.append(result)

        async with asyncio.timeout(60):
            await asyncio.gather(*(play(case, i) for i, case in enumerate(cases)))
            ends = time.monotonic() + RANDOM_PHASE_SECONDS
            index = 0
            while time.monotonic() < min(ends, deadline):
                batch = [_case(randomized, random_seed) for _ in range(PARALLEL)]
                await asyncio.gather(*(play(case, index + i) for i, case in enumerate(batch)))
                index += PARALLEL
            stop.set()
            problems += await watching
        assert (await hub.http.get("/healthz")).status_code == 200
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, f"random phase seed {random_seed}: {problems}"
    assert not errors, f"random phase seed {random_seed}: {errors}"
