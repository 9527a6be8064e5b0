"""The broker's cost on one Redis and on a 3-master Redis Cluster, side by side (issue 18).

`python -m bench.cluster_broker [--users 1000] [--events 100000] [--batch 500]`

One process subscribes a channel per user (the hub's pub/sub side) and publishes events to
random users in batches, as the hub's publisher does, waiting for every event of a batch to be
delivered before the next: the figure is the whole path, publish to delivery, through the
broker each deployment would use (`RedisBroker`, one hand-written RESP link each way, vs
`RedisClusterBroker`, redis-py's cluster pipeline to publish and one sharded link per master).
It prints events/s, the bench process's CPU µs per event (publisher and subscriber together),
and the Redis servers' CPU µs per event. Everything runs on this machine (a private
redis-server and a private 3+3 cluster on loopback), so the cluster's figure shows its
overhead, not its speed-up: its masters share the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

from bench.services import PrivateRedis, proc_cpu_seconds
from hub.broker import Broker, user_channel
from hub.broker_redis import RedisBroker
from hub.broker_redis_cluster import RedisClusterBroker
from tests.redis_cluster import RedisClusterNodes


async def measure(broker: Broker, redis_pids: list[int], users: int, events: int,
                  batch: int) -> dict[str, float]:
    delivered = 0
    enough = asyncio.Event()
    wanted = 0

    def deliver(_channel: str, _payload: bytes) -> None:
        nonlocal delivered
        delivered += 1
        if delivered >= wanted:
            enough.set()

    await broker.open(deliver, lambda: None)
    try:
        channels = [user_channel("bench:", user) for user in range(users)]
        await asyncio.gather(*(broker.subscribe(channel) for channel in channels))
        payload = b'{"id":1,"name":"bench","data":{"n":0}}'
        rng = random.Random(7)
        start_cpu = time.process_time()
        start_redis = sum(proc_cpu_seconds(pid) for pid in redis_pids)
        start = time.perf_counter()
        for sent in range(0, events, batch):
            wanted = sent + batch
            enough.clear()
            await broker.publish([(rng.choice(channels), payload) for _ in range(batch)])
            async with asyncio.timeout(30):
                await enough.wait()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - start_cpu
        redis_cpu = sum(proc_cpu_seconds(pid) for pid in redis_pids) - start_redis
    finally:
        await broker.close()
    count = (events // batch) * batch
    return {"events_per_s": count / elapsed, "process_cpu_us": cpu / count * 1e6,
            "redis_cpu_us": redis_cpu / count * 1e6}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []

    single = PrivateRedis(cpus=set(os.sched_getaffinity(0)))
    single.start()
    try:
        pid = single.pid()
        assert pid is not None
        rows.append(("one Redis, RedisBroker", await measure(
            RedisBroker(single.url), [pid], args.users, args.events, args.batch)))
    finally:
        single.stop()

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
        cluster = RedisClusterNodes(Path(directory))
        try:
            cluster.start()
            pids = [process.pid for process in cluster.processes.values()]
            rows.append(("3-master cluster, RedisClusterBroker", await measure(
                RedisClusterBroker(cluster.url), pids, args.users, args.events, args.batch)))
        finally:
            cluster.stop()

    print(f"{args.users} channels, {args.events} events in batches of {args.batch}, publish to delivery")
    print("| broker | events/s | bench process CPU µs/event | Redis CPU µs/event (all nodes) |")
    print("|---|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | {row['events_per_s']:,.0f} | {row['process_cpu_us']:.1f} | "
              f"{row['redis_cpu_us']:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
