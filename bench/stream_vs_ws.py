"""The event stream over HTTP next to /ws (issue 16): idle memory per connection and unicast
delivery latency, each transport on a fresh hub process of its own (SQLite, in-process broker).

    .venv/bin/python -m bench.stream_vs_ws [--clients 1000] [--rate 200] [--seconds 10]

Clients are plain asyncio connections in this process (an HTTP/1.1 GET read line by line, or a
`websockets` client), one per user. Memory is the hub's RSS after the clients connected minus
before, per connection. Latency is from an event's `created_at` (its commit) to its arrival,
for events published one per call at `--rate` calls/s through `POST /api/v1/publish` to random
users; it includes the publish path, so compare the two transports, not absolute figures with
bench/run's, which inject straight into Redis. Stops by itself: every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import websockets

from bench.chat_bench import free_port
from bench.loadgen import percentile

ROOT = Path(__file__).resolve().parent.parent
API_KEY = secrets.token_hex(16)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def hub(workdir: Path, tag: str) -> AsyncIterator[tuple[int, str, dict[str, str]]]:
    port = free_port()
    env = {**os.environ, "HUB_ENV": "dev", "JWT_SECRET": secrets.token_hex(32), "LOG_LEVEL": "WARNING",
           "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/{tag}.db", "HUB_API_KEY": API_KEY,
           "ACCESS_TOKEN_TTL": "3600", "WS_MAX_CONNECTIONS_PER_USER": "5"}
    env.pop("REDIS_URL", None)
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub", "serve", "--port",
                                                   str(port), env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(base + "/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield process.pid, base, env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def users(env: dict[str, str], count: int) -> list[tuple[int, str]]:
    from auth.tokens import ACCESS, TokenCodec
    from hub.db import Database
    from hub.users import create_user

    db = Database(env["DATABASE_URL"])
    db.open()
    try:
        async with db.sessions.begin() as session:
            ids = [(await create_user(session, f"b{n}_{secrets.token_hex(3)}")).id for n in range(count)]
    finally:
        await db.close()
    codec = TokenCodec(env["JWT_SECRET"], "HS256", 3600, 86400)
    return [(user_id, codec.issue(user_id, ACCESS)[0]) for user_id in ids]


def _created(event: dict[str, object]) -> float:
    return dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00")).timestamp()


async def stream_client(port: int, token: str, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/stream HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
                 .encode())
    try:
        while line := await reader.readline():
            if line.startswith(b"data: {\"id\""):
                latencies.append(time.time() - _created(json.loads(line[6:])))
    finally:
        writer.close()


async def ws_client(url: str, token: str, latencies: list[float], ready: asyncio.Event) -> None:
    async with websockets.connect(url, max_size=2**20, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.recv()
        ready.set()
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") == "event":
                latencies.append(time.time() - _created(frame))


async def measure(transport: str, clients: int, rate: int, seconds: float, workdir: Path) -> dict[str, float]:
    async with hub(workdir, transport) as (pid, base, env):
        people = await users(env, clients)
        before = rss(pid)
        latencies: list[float] = []
        tasks = []
        port = int(base.rsplit(":", 1)[1])
        for start in range(0, clients, 100):
            batch = people[start:start + 100]
            if transport == "stream":
                tasks += [asyncio.create_task(stream_client(port, token, latencies)) for _, token in batch]
            else:
                ready = [asyncio.Event() for _ in batch]
                url = base.replace("http", "ws") + "/ws"
                tasks += [asyncio.create_task(ws_client(url, token, latencies, r))
                          for (_, token), r in zip(batch, ready, strict=True)]
                async with asyncio.timeout(30):
                    await asyncio.gather(*(r.wait() for r in ready))
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with asyncio.timeout(60):
                while True:  # every client registered
                    if f"hub_connections {float(clients)}" in (await http.get("/metrics")).text:
                        break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            after = rss(pid)
            rng = random.Random(16)
            sent, deadline = 0, time.monotonic() + seconds
            while time.monotonic() < deadline:
                tick = time.monotonic()
                calls = [http.post("/api/v1/publish", headers={"Authorization": f"Bearer {API_KEY}"},
                                   json={"user_ids": [rng.choice(people)[0]], "name": "bench.tick"})
                         for _ in range(max(1, rate // 10))]
                await asyncio.gather(*calls)
                sent += len(calls)
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while True:  # the last events on their way
                        if len(latencies) >= sent:
                            break
                        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"clients": clients, "rss_per_conn_kib": (after - before) / clients / 1024,
            "sent": sent, "delivered": len(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hub-stream-bench-") as workdir:
        for transport in ("ws", "stream"):
            row = await measure(transport, args.clients, args.rate, args.seconds, Path(workdir))
            print(f"{transport:6} " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in row.items()), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_vs_ws")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=200, help="publish calls per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    return asyncio.run(asyncio.wait_for(main_async(parser.parse_args()), 600))


if __name__ == "__main__":
    raise SystemExit(main())
