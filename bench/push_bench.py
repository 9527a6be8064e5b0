"""Web Push benchmark: pushes decided and sent per second for offline users of one publish call.

Starts a hub process (`python -m hub serve`, PostgreSQL + Redis in a throw-away database, Web
Push on with PUSH_DELAY=0) pinned to the first CPU, and `--sinks` push service sink processes
pinned to the others, sharing one HTTPS port with SO_REUSEPORT. A sink is a bare asyncio
HTTP/1.1-over-TLS server (keep-alive, 201 to every POST) that does not decrypt: it counts, and
sends every `--sample`-th body back, which this script decrypts with the subscription's keys
to prove the pushes are well-formed RFC 8291 messages for the right user. It inserts `--users`
users, each with one subscription (100 key pairs reused: the hub's cost per push is the
same), publishes one event to all of them, and reports pushes/s (decided, and arrived), the
hub's CPU time per push, and `encrypt` alone per push.

    .venv/bin/python -m bench.push_bench --users 10000   # about 30 s on a quiet machine

Not part of the tests. PostgreSQL is not pinned: it shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

import asyncpg
import http_ece
import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from bench.chat_bench import free_port, running_hub, scratch_database
from bench.profile import profiled, summarize
from bench.services import cores, proc_cpu_seconds
from hub.push_crypto import b64url, encrypt, generate_vapid_key, public_key_b64
from tests.certs import self_signed

EVENT = "bench.push"
API_KEY = "bench-api-key-" + secrets.token_hex(8)
KEY_PAIRS = 100
ANSWER = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


class SinkProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: each request's body is read, counted and answered 201."""

    def __init__(self, slot: int, counts: Any, samples: Any, sample_every: int) -> None:
        self._slot, self._counts, self._samples, self._every = slot, counts, samples, sample_every
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4:end + 4 + length])
            del self._buffer[:end + 4 + length]
            count = self._counts[self._slot] + 1
            self._counts[self._slot] = count
            if count % self._every == 1 or self._every == 1:
                self._samples.put((head[0].split(" ")[1], body))
            assert self._transport is not None
            self._transport.write(ANSWER)


def sink_worker(slot: int, port: int, cert: str, key: str, cpus: set[int], counts: Any,
                samples: Any, sample_every: int) -> None:
    """One sink process (spawned): pinned to `cpus`, serving until terminated."""
    os.sched_setaffinity(0, cpus)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SinkProtocol(slot, counts, samples, sample_every), "127.0.0.1", port,
            ssl=context, reuse_port=True, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


@dataclass
class Sinks:
    url: str
    cert: Path
    counts: SynchronizedArray[Any]
    samples: Any
    pids: list[int]

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def total(self) -> int:
        return sum(self.counts[:])

    def drain_samples(self) -> list[tuple[str, bytes]]:
        taken: list[tuple[str, bytes]] = []
        with contextlib.suppress(Exception):
            while True:
                taken.append(self.samples.get_nowait())
        return taken


@contextlib.contextmanager
def running_sinks(workdir: Path, processes: int, cpus: set[int], sample_every: int) -> Iterator[Sinks]:
    cert, key = self_signed(workdir)
    port = free_port()
    spawn = multiprocessing.get_context("spawn")
    counts = spawn.Array("q", processes, lock=False)
    samples = spawn.Queue()
    workers = [spawn.Process(target=sink_worker, daemon=True, args=(
        slot, port, str(cert), str(key), cpus, counts, samples, sample_every))
        for slot in range(processes)]
    for worker in workers:
        worker.start()
    try:
        yield Sinks(f"https://localhost:{port}", cert, counts, samples,
                    [worker.pid for worker in workers if worker.pid is not None])
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(10)


async def wait_listening(url: str, cert: Path) -> None:
    async with httpx.AsyncClient(verify=str(cert)) as http:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                await http.post(url + "/push/probe", content=b"")
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the push sinks did not start within 30 s")


async def insert_users(database_url: str, users: int, endpoint_base: str,
                       keys: list[tuple[ec.EllipticCurvePrivateKey, bytes]]) -> list[int]:
    public = [(public_key_b64(key), b64url(auth)) for key, auth in keys]
    now = dt.datetime.now(dt.UTC)
    connection = await asyncpg.connect(database_url)
    try:
        ids = [row[0] for row in await connection.fetch(
            "INSERT INTO users (username, created_at) SELECT 'bench' || n, $2 "
            "FROM generate_series(1, $1) AS n RETURNING id", users, now)]
        await connection.executemany(
            "INSERT INTO streams (user_id, epoch, last_id, published_id, trimmed_id, updated_at) "
            "VALUES ($1, $2, 0, 0, 0, $3)", [(i, secrets.token_hex(8), now) for i in ids])
        await connection.executemany(
            "INSERT INTO push_users (user_id, scanned_id, delivered_id) VALUES ($1, 0, 0)",
            [(i,) for i in ids])
        await connection.executemany(
            "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(i, f"{endpoint_base}/push/{i}", *public[i % len(public)], now) for i in ids])
    finally:
        await connection.close()
    return ids


def check_samples(samples: list[tuple[str, bytes]],
                  keys: list[tuple[ec.EllipticCurvePrivateKey, bytes]]) -> int:
    """Decrypt each sampled body with its user's keys; raises unless each is this event."""
    checked = 0
    for path, body in samples:
        if path == "/push/probe":
            continue
        user = int(path.rsplit("/", 1)[1])
        key, auth = keys[user % len(keys)]
        payload = orjson.loads(http_ece.decrypt(body, private_key=key, auth_secret=auth,
                                                version="aes128gcm"))
        assert payload["event"]["name"] == EVENT, payload
        checked += 1
    return checked


def encrypt_cost(rounds: int) -> float:
    """Seconds per `encrypt` of a payload of the size this bench sends (one CPU, no I/O)."""
    key = ec.generate_private_key(ec.SECP256R1())
    p256dh, auth = public_key_b64(key), b64url(os.urandom(16))
    payload = orjson.dumps({"title": EVENT, "body": "", "event": {
        "id": 1, "name": EVENT, "data": {"text": "hello"}, "created_at": "2026-01-01T00:00:00Z"}})
    started = time.process_time()
    for _ in range(rounds):
        encrypt(payload, p256dh, auth)
    return (time.process_time() - started) / rounds


def children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def child_hub_pid() -> int:
    """The pid of this script's `hub serve` child (running_hub starts exactly one)."""
    for pid in children(os.getpid()):
        with contextlib.suppress(OSError):
            if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise RuntimeError("no hub child process found")


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (threads it starts later inherit the mask)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


async def scanned_all(connection: asyncpg.Connection) -> bool:
    left = await connection.fetchval("SELECT count(*) FROM push_users WHERE scanned_id = 0")
    return int(left) == 0


@dataclass
class Run:
    published: float = 0.0
    decided: float | None = None
    count: int = 0
    elapsed: float = 0.0


async def publish_and_wait(args: argparse.Namespace, http: httpx.AsyncClient, ids: list[int],
                           sinks: Sinks, env: dict[str, str], run: Run) -> None:
    """Publish one event to `ids` and wait until every push arrived (or `--deadline`)."""
    first = sinks.total()
    started = time.perf_counter()
    answer = await http.post("/api/v1/publish", json={
        "user_ids": ids, "name": EVENT, "data": {"text": "hello"}},
        headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 202, answer.text
    run.published = time.perf_counter() - started
    connection = await asyncpg.connect(env["DATABASE_URL"])  # one: the server is shared
    try:
        while run.count < args.users and time.perf_counter() - started < args.deadline:
            await asyncio.sleep(0.2)
            run.count = sinks.total() - first
            if run.decided is None and await scanned_all(connection):
                run.decided = time.perf_counter() - started
    finally:
        await connection.close()
    run.elapsed = time.perf_counter() - started


async def bench(args: argparse.Namespace) -> None:
    hub_cpus, other_cpus = cores()
    encrypt_seconds = encrypt_cost(args.encrypt_rounds)
    keys = [(ec.generate_private_key(ec.SECP256R1()), os.urandom(16)) for _ in range(KEY_PAIRS)]
    load_before = os.getloadavg()
    os.sched_setaffinity(0, other_cpus)
    with tempfile.TemporaryDirectory() as tmp, \
            running_sinks(Path(tmp), args.sinks, other_cpus, args.sample) as sinks:
        await wait_listening(sinks.url, sinks.cert)
        async with scratch_database("postgres", secrets.token_hex(4), Path(tmp)) as env:
            env = {**env, "VAPID_PRIVATE_KEY": generate_vapid_key(),
                   "VAPID_SUBJECT": "mailto:bench@example.com", "PUSH_DELAY": "0",
                   "PUSH_EVENTS": EVENT, "PUSH_ALLOW_PRIVATE": "1", "SSL_CERT_FILE": str(sinks.cert),
                   "HUB_API_KEY": API_KEY, "PUSH_MAX_IN_FLIGHT": str(args.in_flight)}
            async with running_hub(env, "postgres", args.workers) as base_url:
                hub_pid = child_hub_pid()
                hub_pids = [hub_pid, *children(hub_pid)]  # gunicorn's workers with --workers > 1
                if args.workers > 1:
                    hub_cpus = hub_cpus | other_cpus
                for pid in hub_pids:  # they inherited this script's pinning to the sinks' CPUs
                    pin_process(pid, hub_cpus)

                def hub_cpu_seconds() -> float:
                    return sum(proc_cpu_seconds(pid) for pid in hub_pids)

                ids = await insert_users(env["DATABASE_URL"], args.users, sinks.url, keys)
                async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                    cpu_before = hub_cpu_seconds()
                    sink_before = sinks.cpu_seconds()
                    run = Run()
                    if args.profile:
                        await profiled(hub_pid, other_cpus, Path(args.profile), args.profile_seconds,
                                       lambda: publish_and_wait(args, http, ids, sinks, env, run))
                    else:
                        await publish_and_wait(args, http, ids, sinks, env, run)
                    hub_cpu = hub_cpu_seconds() - cpu_before
                    sink_cpu = sinks.cpu_seconds() - sink_before
                    metrics = (await http.get("/metrics")).text
    if args.profile:
        print(summarize(Path(args.profile)))
    published, decided, count, elapsed = run.published, run.decided, run.count, run.elapsed
    checked = check_samples(sinks.drain_samples(), keys)
    sent = [line for line in metrics.splitlines() if line.startswith("hub_push_sent_total{")]
    decided_text = f"{decided:.2f} s ({args.users / decided:.0f}/s)" if decided else "not done"
    print(f"users: {args.users}; hub ({args.workers} worker(s)) on CPU {sorted(hub_cpus)}, "
          f"{args.sinks} sinks on {sorted(other_cpus)}; PUSH_MAX_IN_FLIGHT={args.in_flight}")
    print(f"publish answered in {published:.2f} s; all decided after {decided_text}; "
          f"{count} pushes arrived in {elapsed:.2f} s: {count / elapsed:.0f} pushes/s")
    per_push = hub_cpu / max(count, 1)
    print(f"hub CPU {hub_cpu:.2f} s: {per_push * 1e6:.0f} µs per push; "
          f"encrypt alone {encrypt_seconds * 1e6:.0f} µs per push; {checked} sampled pushes "
          f"decrypted and checked")
    print(f"pushes/s one whole core would give the hub at that CPU per push: {1 / per_push:.0f} "
          f"(target ≥ 2,000; the arrival rate above is what it got on this machine now, "
          f"{hub_cpu / elapsed:.0%} of a core)")
    print(f"sinks CPU {sink_cpu:.2f} s: {sink_cpu / max(count, 1) * 1e6:.0f} µs per push")
    print("load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
        *load_before, *os.getloadavg()))
    print("\n".join(sent) + ("" if args.workers == 1 else "  (one worker's count)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--in-flight", type=int, default=100, help="PUSH_MAX_IN_FLIGHT")
    parser.add_argument("--sinks", type=int, default=2, help="push service sink processes")
    parser.add_argument("--workers", type=int, default=1,
                        help="hub serve --workers (more than 1: unpinned, on every CPU)")
    parser.add_argument("--sample", type=int, default=500,
                        help="decrypt every Nth push a sink receives")
    parser.add_argument("--encrypt-rounds", type=int, default=1000)
    parser.add_argument("--profile", metavar="FILE",
                        help="record the hub with py-spy (raw collapsed stacks) into FILE")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    asyncio.run(bench(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
