"""The Redis Cluster broker's slot map and its publishing side.

`SlotMap` is redis-py's view of the cluster (CLUSTER SLOTS through `RedisCluster`), read again
when someone found it out of date (a MOVED, a lost node, a SUNSUBSCRIBE pushed for a moved
slot). `ShardedPublisher` writes a batch of SPUBLISH at once on a hand-written link per master
(`bench/cluster_broker.py`: redis-py's cluster pipeline costs about 20 µs of CPU per event, ten
times the whole single-Redis path). SPUBLISHes answered with MOVED or ASK (a slot moved since
the map was read) go again through redis-py's cluster pipeline, which follows the redirection.
One channel's messages go to one master on one connection, in the order given.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from hub.broker import BrokerUnavailable
from hub.broker_redis import CONNECT_TIMEOUT, PUBLISH_TIMEOUT, Reply, _RespLink, _unexpected_reply
from hub.redis_clients import REDIS_FAILURES, node_url

log = logging.getLogger("hub.broker.redis_cluster")
Node = tuple[str, str, int]  # name ("host:port"), host, port


class SlotMap:
    """Which master owns which slot, as redis-py last read it."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.stale = True

    async def refresh(self) -> None:
        """Read the map again when it is stale; raises what redis-py raises (REDIS_FAILURES)."""
        if not self.stale:
            return
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await self.cluster.initialize()  # the first contact when none succeeded yet
            await self.cluster.nodes_manager.initialize()
        self.stale = False

    def owner(self, channel: str) -> Node:
        """The master of `channel`'s slot; raises SlotNotCoveredError or KeyError when unknown."""
        node = self.cluster.nodes_manager.get_node_from_slot(key_slot(channel.encode()))
        return node.name, node.host, int(node.port)


class ShardedPublisher:
    """SPUBLISH in batches on one link per master; raises BrokerUnavailable on failure."""

    def __init__(self, slots: SlotMap, url: str, client_name: str) -> None:
        self._slots = slots
        self._url = url
        self._client_name = client_name
        self._links: dict[str, _RespLink] = {}
        self._opening: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not messages:
            return
        by_node: dict[Node, list[int]] = defaultdict(list)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._slots.refresh()
                for index, (channel, _) in enumerate(messages):
                    by_node[self._slots.owner(channel)].append(index)
                answers = await asyncio.gather(*(
                    self._publish_on(node, [messages[i] for i in indexes])
                    for node, indexes in by_node.items()))
        except (*REDIS_FAILURES, KeyError) as exc:
            self._slots.stale = True
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
        redirected = [messages[index] for indexes, replies in zip(by_node.values(), answers, strict=True)
                      for index, reply in zip(indexes, replies, strict=True)
                      if isinstance(reply, Exception)]
        if redirected:
            log.info("%d SPUBLISH refused (a slot moved); following the redirection", len(redirected))
            self._slots.stale = True
            await self._publish_redirected(redirected)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    async def _publish_on(self, node: Node, messages: list[tuple[str, bytes]]) -> list[Reply]:
        name, host, port = node
        async with self._opening[name]:
            link = self._links.get(name)
            if link is None or not link.usable:
                link = self._links[name] = await _RespLink.open(
                    node_url(self._url, host, port), self._client_name, _unexpected_reply)
        try:
            return await link.request([(b"SPUBLISH", channel.encode(), payload)
                                       for channel, payload in messages])
        except BaseException:
            link.close()  # a reply still owed would answer the next request
            raise

    async def _publish_redirected(self, messages: list[tuple[str, bytes]]) -> None:
        """Through redis-py's cluster pipeline, which follows MOVED and ASK."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                pipe = self._slots.cluster.pipeline(transaction=False)
                for channel, payload in messages:
                    pipe.execute_command("SPUBLISH", channel, payload)
                replies = await pipe.execute(raise_on_error=False)
        except REDIS_FAILURES as exc:
            self._slots.stale = True
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
        refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if refused is not None:
            raise BrokerUnavailable(f"Redis Cluster refused an SPUBLISH: {refused}")
