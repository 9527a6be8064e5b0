"""redis-py clients for `REDIS_URL`: one place that knows whether it names one Redis server or
the nodes of a Redis Cluster (`REDIS_CLUSTER=true`, §14).

With a cluster, `REDIS_URL` is one or several comma-separated `redis://` or `rediss://` URLs of
cluster nodes; any one reachable node is enough to learn the whole topology. Credentials and TLS
options are read from the first URL and used for every node (a cluster shares them). Callers get
a client with redis-py's command API either way; commands of several keys must keep their keys in
one slot or be split per key (see `parser_bridge.parse.queue_redis`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

RedisClient = aioredis.Redis | RedisCluster
# what a client raises when Redis cannot serve: a cluster client adds RedisClusterException (not a
# RedisError) for "no node reachable" and "slot not covered"; OSError includes TimeoutError
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)
CLUSTER_SCHEMES = ("redis://", "rediss://")


def cluster_urls(url: str) -> list[str]:
    """The node URLs of a cluster's `REDIS_URL`, in the order given."""
    return [part.strip() for part in url.split(",") if part.strip()]


def cluster_url_problem(url: str) -> str | None:
    """Why `url` cannot name a Redis Cluster, or None (settings turn it into a ConfigError)."""
    for part in cluster_urls(url):
        if not part.startswith(CLUSTER_SCHEMES):
            return f"every node must be a redis:// or rediss:// URL (got {part.split('://')[0]!r})"
        split = urlsplit(part)
        if not split.hostname:
            return f"the node URL {part!r} names no host"
        if split.path.strip("/") not in ("", "0"):
            return "a Redis Cluster has only database 0: drop the /<db> from the URLs"
    return None


def node_url(url: str, host: str, port: int) -> str:
    """The first node URL of `url` pointed at `host:port`, keeping credentials, TLS and query."""
    split = urlsplit(cluster_urls(url)[0])
    credentials = split.netloc.rpartition("@")[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    netloc = f"{credentials}@{address}" if credentials else address
    return urlunsplit((split.scheme, netloc, split.path, split.query, ""))


def redis_client(url: str, *, cluster: bool, **options: Any) -> RedisClient:
    """A client for `url`; constructing it does no I/O (the first command connects)."""
    if not cluster:
        return aioredis.from_url(url, **options)
    return cluster_client(url, **options)


def cluster_client(url: str, **options: Any) -> RedisCluster:
    """A cluster client knowing the nodes of `url`; the topology is read on first use."""
    first, *others = cluster_urls(url)
    startup = []
    for other in others:
        split = urlsplit(other)
        startup.append(ClusterNode(split.hostname or "localhost", split.port or 6379))
    options.setdefault("require_full_coverage", False)  # serve the slots that are up
    return RedisCluster.from_url(first, startup_nodes=startup or None, **options)
