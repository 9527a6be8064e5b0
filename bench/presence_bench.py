"""Presence benchmark (issue 15, "Cost and scale"): a member of a 100-member chat whose other
members are all connected comes online and goes offline again, many times; it prints how long the
last of the others took to see each change (p50/p99/max) and the Redis commands one
connect + disconnect cycle cost, by command, read from a private redis-server's commandstats.

    .venv/bin/python -m bench.presence_bench --members 100 --cycles 30

Starts its own redis-server (bench.services.PrivateRedis), a throw-away PostgreSQL database and
one `hub serve`; everything is stopped and dropped on the way out. Not part of the tests. The
offline figure includes PRESENCE_OFFLINE_GRACE (1 s by default): a user is announced offline
only once they have stayed away that long.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from bench.chat_bench import Member, register, running_hub, scratch_database
from bench.services import PrivateRedis, cores


async def commandstats(url: str) -> dict[str, int]:
    client = aioredis.from_url(url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


async def bench(args: argparse.Namespace) -> None:
    _, other_cpus = cores()
    redis = PrivateRedis(other_cpus)
    redis.start()
    tag = secrets.token_hex(4)
    try:
        async with scratch_database("postgres", tag, Path(args.workdir)) as env:
            env = {**env, "REDIS_URL": redis.url}
            async with running_hub(env, "postgres") as base_url, \
                    httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                await run(args, http, base_url, redis.url, tag)
    finally:
        redis.stop()


async def run(args: argparse.Namespace, http: httpx.AsyncClient, base_url: str, redis_url: str,
              tag: str) -> None:
    limit = asyncio.Semaphore(8)

    async def one(n: int) -> Member:
        async with limit:
            return await register(http, f"p{tag}_{n}")

    members = list(await asyncio.gather(*(one(n) for n in range(args.members))))
    mover, others = members[0], members[1:]
    created = await http.post("/api/v1/chats", headers=mover.headers, json={
        "title": "presence bench", "member_ids": [m.id for m in others]})
    created.raise_for_status()
    ws_url = base_url.replace("http://", "ws://") + "/ws"

    seen: dict[bool, int] = {True: 0, False: 0}
    changed = {True: asyncio.Event(), False: asyncio.Event()}

    async def listen(member: Member, ready: asyncio.Event, count: list[int]) -> None:
        async with connect(ws_url, open_timeout=20, max_queue=None) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": member.token}).decode())
            assert orjson.loads(await ws.recv())["type"] == "welcome"
            count.append(member.id)
            if len(count) == len(others):
                ready.set()
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame.get("type") == "presence" and frame["user_id"] == mover.id:
                    seen[frame["online"]] += 1
                    if seen[frame["online"]] == len(others):
                        changed[frame["online"]].set()

    ready, count = asyncio.Event(), []
    listeners = [asyncio.create_task(listen(m, ready, count)) for m in others]
    online_ms: list[float] = []
    offline_ms: list[float] = []
    try:
        await asyncio.wait_for(ready.wait(), 60)
        before = after = {}
        for cycle in range(args.cycles + 1):  # the first cycle warms up, unmeasured
            if cycle == 1:
                before = await commandstats(redis_url)
            for state in (True, False):
                seen[state] = 0
                changed[state] = asyncio.Event()
            started = time.perf_counter()
            ws: ClientConnection = await connect(ws_url, open_timeout=20)
            await ws.send(orjson.dumps({"type": "auth", "token": mover.token}).decode())
            await asyncio.wait_for(changed[True].wait(), 30)
            if cycle:
                online_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await ws.close()
            await asyncio.wait_for(changed[False].wait(), 30)
            if cycle:
                offline_ms.append((time.perf_counter() - started) * 1000)
        after = await commandstats(redis_url)
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)

    def figures(values: list[float]) -> str:
        q = statistics.quantiles(sorted(values), n=100, method="inclusive")
        return f"p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms, max {max(values):.0f} ms"

    print(f"members={args.members} (all connected) cycles={args.cycles}")
    print(f"online  -> seen by the last of {len(others)} others: {figures(online_ms)}")
    print(f"offline -> seen by the last of {len(others)} others: {figures(offline_ms)} "
          f"(includes the 1 s offline grace)")
    per_cycle = {name: (after.get(name, 0) - before.get(name, 0)) / args.cycles
                 for name in after if after.get(name, 0) != before.get(name, 0)}
    print("Redis commands per connect + disconnect cycle (commandstats, heartbeats included):")
    for name, calls in sorted(per_cycle.items(), key=lambda item: -item[1]):
        print(f"  {name:24} {calls:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--deadline", type=float, default=600.0)
    args = parser.parse_args()

    async def bounded() -> None:
        await asyncio.wait_for(bench(args), args.deadline)

    asyncio.run(bounded())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
