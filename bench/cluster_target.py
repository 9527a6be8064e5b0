"""The `hub-cluster` target (issue 18): two hub processes on a private 3-master Redis Cluster.

`bench/run --targets hub,hub-cluster` runs the injected scenarios (idle, unicast ladder, fan-out)
on the single-Redis hub and on this one with the same load generator. Both hub processes are
pinned to the server core, the cluster's masters to the load generator's, as the single Redis
is: on one machine the figure shows the cluster's overhead (server CPU µs per event summed over
both processes, latency), not its speed-up. The load generator spreads its connections over the
two processes by user id and injects with SPUBLISH on one raw connection per master, each
channel to the master owning its slot.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.crc import key_slot

from bench.loadgen import RespPublisher
from bench.services import _child_setup, pinned_command, proc_cpu_seconds, proc_rss_bytes
from bench.targets import Server, Target, start
from tests.redis_cluster import RedisClusterNodes

HUB_PROCESSES = 2


class PrivateCluster(RedisClusterNodes):
    """A cluster of this run: 3 masters (`replicas` each), pinned to `cpus`, sized like the
    single PrivateRedis (client and pub/sub output limits); stopped by PID."""

    def __init__(self, directory: Path, cpus: set[int], replicas: int = 0) -> None:
        super().__init__(directory, replicas=replicas)
        self.cpus = cpus
        self.extra_args = ["--maxclients", "30000", "--client-output-buffer-limit", "pubsub 256mb 128mb 60",
                           "--loglevel", "warning"]

    def launch(self, port: int) -> None:
        self.processes[port] = subprocess.Popen(
            pinned_command(self.node_command(port), self.cpus), preexec_fn=_child_setup,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.processes.values())


class ClusterPublisher:
    """SPUBLISH each message on the master owning its channel's slot: one pipelined raw
    connection per master, the slot map read once at `open` (the bench's cluster stays put)."""

    def __init__(self, host: str, port: int) -> None:
        self._seed = (host, port)
        self._links: list[RespPublisher] = []
        self._by_slot: list[int] = []
        self._by_channel: dict[bytes, int] = {}

    async def open(self) -> None:
        client = aioredis.Redis(host=self._seed[0], port=self._seed[1])
        try:
            slots = await client.cluster("SLOTS")
        finally:
            await client.aclose()
        masters: dict[tuple[str, int], int] = {}
        self._by_slot = [-1] * 16384
        for low, high, (host, port, *_), *_replicas in slots:
            address = (host.decode(), int(port))
            index = masters.setdefault(address, len(masters))
            self._by_slot[low:high + 1] = [index] * (high - low + 1)
        if -1 in self._by_slot:
            raise RuntimeError("the cluster does not cover every slot")
        self._links = [RespPublisher(host, port, b"SPUBLISH") for host, port in masters]
        for link in self._links:
            await link.open()

    async def close(self) -> None:
        for link in self._links:
            await link.close()

    def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        groups: list[list[tuple[bytes, bytes]]] = [[] for _ in self._links]
        by_channel = self._by_channel
        for message in messages:
            index = by_channel.get(message[0])
            if index is None:
                index = by_channel[message[0]] = self._by_slot[key_slot(message[0])]
            groups[index].append(message)
        for link, group in zip(self._links, groups, strict=True):
            if group:
                link.publish(group)

    async def flushed(self, limit: float = 30.0) -> None:
        for link in self._links:
            await link.flushed(limit)

    @property
    def masters(self) -> int:
        return len(self._links)

    @property
    def refused(self) -> int:
        return sum(link.refused for link in self._links)


@dataclass
class HubGroup:
    """Several hub processes measured as one server: CPU and RSS are their sums, the publish API
    and the `process` reported are the first one's."""

    servers: list[Server]

    @property
    def target(self) -> Target:
        return self.servers[0].target

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The first process that exited badly, else the first one."""
        bad = (s.process for s in self.servers if s.process.returncode not in (None, 0, -15))
        return next(bad, self.servers[0].process)

    @property
    def pid(self) -> int:
        return self.servers[0].pid

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(server.pid for server in self.servers)

    @property
    def ws_urls(self) -> list[str]:
        return [server.ws_url for server in self.servers]

    @property
    def http_url(self) -> str:
        return self.servers[0].http_url

    def rss(self) -> int:
        return sum(proc_rss_bytes(pid) for pid in self.pids)

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def alive(self) -> bool:
        return all(server.alive() for server in self.servers)

    def stop(self, grace: float = 30.0) -> float:
        """Every process stopped at once (SIGTERM, SIGKILL after `grace`); the slowest's seconds."""
        def stop(server: Server) -> float:
            return server.stop(grace)

        with ThreadPoolExecutor(len(self.servers)) as pool:
            return max(pool.map(stop, self.servers))


@contextlib.asynccontextmanager
async def cluster_hubs(target: Target, server_cpus: set[int], redis_cpus: set[int], log_dir: Path,
                       hub_env: dict[str, str], secret: str
                       ) -> AsyncIterator[tuple[HubGroup, ClusterPublisher, tuple[int, ...]]]:
    """A private cluster, `HUB_PROCESSES` hubs on it and a publisher; all stopped on exit.
    Yields the hubs, the publisher (not yet opened) and the cluster's PIDs."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
        cluster = PrivateCluster(Path(directory), redis_cpus)
        servers: list[Server] = []
        try:
            cluster.start()
            env = {**hub_env, "REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"}
            for index in range(HUB_PROCESSES):
                servers.append(await start(target, server_cpus, log_dir, redis_url=cluster.url,
                                           secret=secret, hub_env=env, log_name=f"{target.key}-{index}"))
            yield HubGroup(servers), ClusterPublisher("127.0.0.1", cluster.ports[0]), cluster.pids()
        finally:
            for server in servers:
                server.stop()
            cluster.stop()
