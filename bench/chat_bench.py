"""Chat delivery benchmark: messages posted to a 100-member chat whose members are all connected.

Starts its own hub (`python -m hub serve`) on a free port of 127.0.0.1, on SQLite with the
in-process broker or on PostgreSQL + Redis (a throw-away database, dropped afterwards), registers
the members, opens one WebSocket per member, then posts messages from rotating senders with a
fixed number in flight. For each message the latency is the time from the start of its POST to
its delivery to the last of the members; it prints messages/s and p50/p99/max of that latency.

    .venv/bin/python bench/chat_bench.py --backend postgres --messages 500 --concurrency 4

Everything runs under one deadline (`--deadline`, seconds); the hub is stopped and the database
dropped on the way out. Not part of the tests. The clients share one Python process, so at high
rates the figures include the clients' own cost of parsing 100 frames per message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "bench password 123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def scratch_database(backend: str, tag: str, workdir: Path) -> AsyncIterator[dict[str, str]]:
    """Environment naming a fresh database (and Redis) for the hub; removed on exit."""
    if backend == "sqlite":
        yield {"DATABASE_URL": f"sqlite+aiosqlite:///{workdir / f'bench_{tag}.db'}"}
        for suffix in ("", "-wal", "-shm"):
            (workdir / f"bench_{tag}.db{suffix}").unlink(missing_ok=True)
        return
    name = f"hub_bench_{tag}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield {"DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name,
               "REDIS_URL": REDIS_URL, "REDIS_CHANNEL_PREFIX": f"bench{tag}:"}
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def running_hub(env: dict[str, str], backend: str, workers: int = 1) -> AsyncIterator[str]:
    """A hub process on a free port (`hub serve --workers`); its base URL. Stopped with SIGTERM
    (then SIGKILL) on exit."""
    port = free_port()
    full_env = {**os.environ, "HUB_ENV": "dev", "JWT_SECRET": secrets.token_hex(32),
                "ACCESS_TOKEN_TTL": "3600", "LOG_LEVEL": "WARNING",
                # this measures delivery, not the per-user posting and sign-in limits
                "CHAT_POST_RATE": "100000", "CHAT_POST_BURST": "100000",
                "AUTH_RATE_LIMIT": "1000000", **env}
    if backend == "postgres":
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub", "migrate", env=full_env, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL)
        if await asyncio.wait_for(migrate.wait(), 60) != 0:
            raise RuntimeError("hub migrate failed")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), env=full_env, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:
            for _ in range(300):
                if process.returncode is not None:
                    raise RuntimeError(f"the hub exited with {process.returncode} during start-up")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the hub did not become ready within 30 s")
        yield base_url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class Member:
    id: int
    token: str
    socket: ClientConnection | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Tracker:
    """Delivery times per message id, and who still has to receive each."""

    members: int
    posted_at: dict[int, float] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)
    last_delivery: dict[int, float] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def reset(self, expected: int) -> None:
        self.delivered.clear()
        self.last_delivery.clear()
        self.all_done = asyncio.Event()
        self.expected = expected

    def on_delivery(self, message_id: int, at: float) -> None:
        count = self.delivered.get(message_id, 0) + 1
        self.delivered[message_id] = count
        if count == self.members:
            self.last_delivery[message_id] = at
            if len(self.last_delivery) == self.expected:
                self.all_done.set()


async def register(http: httpx.AsyncClient, name: str) -> Member:
    created = await http.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    created.raise_for_status()
    tokens = await http.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    tokens.raise_for_status()
    return Member(created.json()["id"], tokens.json()["access_token"])


async def listen(member: Member, ws_url: str, ready: asyncio.Event, tracker: Tracker,
                 connected: list[int]) -> None:
    async with connect(ws_url, open_timeout=20, max_queue=None) as ws:
        member.socket = ws
        await ws.send(orjson.dumps({"type": "auth", "token": member.token}).decode())
        welcome = orjson.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"no welcome for user {member.id}: {welcome}")
        connected.append(member.id)
        if len(connected) == tracker.members:
            ready.set()
        async for raw in ws:
            at = time.perf_counter()
            frame = orjson.loads(raw)
            if frame.get("type") == "event" and frame.get("name") == "chat.message":
                tracker.on_delivery(frame["data"]["id"], at)


async def bench(args: argparse.Namespace) -> None:
    tag = secrets.token_hex(4)
    async with scratch_database(args.backend, tag, Path(args.workdir)) as env, \
            running_hub(env, args.backend) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=30,
                              limits=httpx.Limits(max_connections=64)) as http:
        limit = asyncio.Semaphore(8)

        async def one(n: int) -> Member:
            async with limit:
                return await register(http, f"b{tag}_{n}")

        t0 = time.perf_counter()
        members = list(await asyncio.gather(*(one(n) for n in range(args.members))))
        owner = members[0]
        created = await http.post("/api/v1/chats", headers=owner.headers, json={
            "title": "bench", "member_ids": [m.id for m in members[1:]]})
        created.raise_for_status()
        chat_id = created.json()["id"]
        print(f"{args.members} members registered and chat {chat_id} created in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)

        tracker = Tracker(args.members)
        ready = asyncio.Event()
        connected: list[int] = []
        ws_url = base_url.replace("http://", "ws://") + "/ws"
        listeners = [asyncio.create_task(listen(m, ws_url, ready, tracker, connected)) for m in members]
        try:
            await asyncio.wait_for(ready.wait(), 30)
            print(f"{len(connected)} WebSockets connected", flush=True)

            # Warm-up: a few messages, delivered everywhere but not measured.
            tracker.expected = 5
            for n in range(5):
                (await http.post(f"/api/v1/chats/{chat_id}/messages", headers=members[n].headers,
                                 json={"text": f"warm-up {n}"})).raise_for_status()
            await asyncio.wait_for(tracker.all_done.wait(), 30)
            tracker.reset(args.messages)

            counter = iter(range(args.messages))
            errors: list[str] = []

            async def poster() -> None:
                for n in counter:
                    sender = members[n % len(members)]
                    started = time.perf_counter()
                    response = await http.post(f"/api/v1/chats/{chat_id}/messages",
                                               headers=sender.headers, json={"text": f"message {n}"})
                    if response.status_code != 201:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                        tracker.expected -= 1
                        continue
                    tracker.posted_at[response.json()["id"]] = started

            began = time.perf_counter()
            await asyncio.gather(*(poster() for _ in range(args.concurrency)))
            if len(tracker.last_delivery) < tracker.expected:
                await asyncio.wait_for(tracker.all_done.wait(), 60)
            finished = max(tracker.last_delivery[i] for i in tracker.posted_at)
        finally:
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)

    latencies = sorted((tracker.last_delivery[i] - tracker.posted_at[i]) * 1000 for i in tracker.posted_at)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    print(f"backend={args.backend} members={args.members} messages={len(latencies)} "
          f"concurrency={args.concurrency} errors={len(errors)}")
    print(f"throughput: {len(latencies) / (finished - began):.1f} messages/s "
          f"({len(latencies) * args.members / (finished - began):.0f} deliveries/s)")
    print(f"POST -> last member's delivery: p50 {quantiles[49]:.1f} ms, p99 {quantiles[98]:.1f} ms, "
          f"max {latencies[-1]:.1f} ms")
    for error in errors[:5]:
        print("error:", error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4, help="POSTs in flight at once")
    parser.add_argument("--deadline", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--workdir", default="/tmp", help="where the SQLite file goes")
    args = parser.parse_args()

    async def bounded() -> None:
        async with asyncio.timeout(args.deadline):
            await bench(args)

    asyncio.run(bounded())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
