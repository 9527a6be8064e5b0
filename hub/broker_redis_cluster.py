"""The Redis Cluster broker: sharded pub/sub, one connection per master that owns a channel.

A sharded channel (`SSUBSCRIBE`/`SPUBLISH notifications:{user_id}`) lives in one hash slot and
its messages stay on the shard owning that slot, so pub/sub traffic spreads over the masters
instead of being copied to every node as classic PUBLISH is. This broker keeps one pub/sub link
per master owning a subscribed channel: the same hiredis-parsed RESP link as `broker_redis`
(each message handed to `deliver` from the socket's read callback). Where a channel lives comes
from redis-py's `RedisCluster` slot map (CLUSTER SLOTS, refreshed on MOVED and on demand).
Publishing (`broker_redis_cluster_publish`) is the same kind of hand-written link, one per
master; one channel's messages go to one master on one connection, in order.

A channel loses its subscription when its link drops (a master killed, a network cut, a link
silent for three health intervals) or when the server pushes SUNSUBSCRIBE for it (its slot
moved to another master). The supervisor then refreshes the slot map, subscribes the affected
channels where they live now and, once every one is confirmed, calls `on_resync` so the hub
re-reads from the store what was published meanwhile. Links whose channels stayed put are not
disturbed. Mistakes in between (an SSUBSCRIBE answered with MOVED, a confirmation that does not
come within `SUBSCRIBE_TIMEOUT`) only send the channels round again: the end state is always
every channel subscribed on its owner, followed by a re-read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from hub.broker import Broker, BrokerUnavailable, Deliver, ResyncChannels
from hub.broker_redis import CONNECT_TIMEOUT, PUBLISH_TIMEOUT, SUBSCRIBE_TIMEOUT, Reply, _RespLink
from hub.broker_redis_cluster_publish import Node, ShardedPublisher, SlotMap
from hub.redis_clients import REDIS_FAILURES, cluster_client, node_url
from hub.supervise import backoff_delay

log = logging.getLogger("hub.broker.redis_cluster")
_SUBSCRIBE, _UNSUBSCRIBE = b"SSUBSCRIBE", b"SUNSUBSCRIBE"


class _ShardLink:
    """The pub/sub link to one master, and the commands on it still owed a reply, in order
    (Redis answers them in order; messages and PING answers are told apart by their kind)."""

    def __init__(self, node: str, link: _RespLink, now: float) -> None:
        self.node = node
        self.link = link
        self.owed: deque[tuple[bytes, list[str], float]] = deque()
        self.channels: set[str] = set()
        self.heard_at = self.pinged_at = now

    def owes_subscriptions(self) -> bool:
        return any(kind == _SUBSCRIBE for kind, _, _ in self.owed)


class RedisClusterBroker(Broker):
    name = "redis-cluster"

    def __init__(self, url: str, *, health_check_interval: float = 5.0,
                 client_name: str = "hub-pubsub") -> None:
        self._url = url
        self._health = health_check_interval
        self._client_name = client_name
        publish_name = client_name.removesuffix("-pubsub") + "-publish"
        self._cluster = cluster_client(url, client_name=publish_name,
                                       socket_connect_timeout=CONNECT_TIMEOUT,
                                       socket_timeout=PUBLISH_TIMEOUT)
        self._slots = SlotMap(self._cluster)
        self._publisher = ShardedPublisher(self._slots, url, publish_name)
        self._channels: set[str] = set()
        self._placed: dict[str, _ShardLink] = {}  # channel -> the link it is subscribed on
        self._homeless: set[str] = set()  # wanted, not subscribed anywhere: the supervisor's work
        self._links: dict[str, _ShardLink] = {}
        self._opening: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._confirm: dict[str, list[asyncio.Future[None]]] = {}
        self._resync_due: set[str] = set()  # channels lost since the last re-read
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._deliver: Deliver = lambda _channel, _payload: None
        self._on_resync: Callable[[], None] = lambda: None
        self._on_resync_channels: ResyncChannels | None = None
        self._closed = False
        self.reconnects = 0

    async def open(self, deliver: Deliver, on_resync: Callable[[], None],
                   on_resync_channels: ResyncChannels | None = None) -> None:
        self._deliver = deliver
        self._on_resync = on_resync
        self._on_resync_channels = on_resync_channels
        self._closed = False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._cluster.initialize()
            self._slots.stale = False
        except REDIS_FAILURES as exc:
            log.warning("Redis Cluster is not reachable yet (%s); the listener keeps trying", exc)
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-cluster-broker")

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        for shard in list(self._links.values()):
            self._drop(shard, resync=False)
        self._publisher.close()
        self._channels.clear()
        self._homeless.clear()
        await self._cluster.aclose()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        placed = self._placed.get(channel)
        if placed is not None and not any(channel in owed for _, owed, _ in placed.owed):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, []).append(waiter)
        if placed is None:
            await self._place([channel])
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
        except TimeoutError:
            log.warning("no confirmation of SSUBSCRIBE %s within %.0fs", channel, SUBSCRIBE_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._homeless.discard(channel)
        self._release(channel)
        shard = self._placed.pop(channel, None)
        if shard is not None:
            shard.channels.discard(channel)
            if shard.link.usable:
                self._send(shard, _UNSUBSCRIBE, [channel])

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        await self._publisher.publish(messages)

    async def ping(self) -> None:
        """Every master answers PING, or BrokerUnavailable naming what failed."""
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        try:
            await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
        except REDIS_FAILURES as exc:
            self._slots.stale = True
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc

    # placing channels on their masters -------------------------------------------------------

    async def _place(self, channels: list[str]) -> None:
        """Subscribe `channels` on the masters owning their slots now; those whose master cannot
        be reached are left homeless for the supervisor."""
        by_node: dict[Node, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for channel in channels:
            try:
                node = self._slots.owner(channel)
            except (*REDIS_FAILURES, KeyError):  # no owner known (yet)
                self._lose(channel)
                continue
            by_node[node][key_slot(channel.encode())].append(channel)
        for node, slots in by_node.items():
            shard = await self._link_to(*node)
            for slot_channels in slots.values():
                # the channel may have been unsubscribed or placed while the link opened
                wanted = [c for c in slot_channels if c in self._channels and c not in self._placed]
                if shard is None:
                    for channel in wanted:
                        self._lose(channel)
                    continue
                for channel in wanted:
                    self._homeless.discard(channel)
                    self._placed[channel] = shard
                    shard.channels.add(channel)
                if wanted:  # one slot per SSUBSCRIBE: Redis refuses channels of several slots
                    self._send(shard, _SUBSCRIBE, wanted)

    async def _link_to(self, name: str, host: str, port: int) -> _ShardLink | None:
        async with self._opening[name]:
            shard = self._links.get(name)
            if shard is not None and shard.link.usable:
                return shard
            if self._closed:
                return None
            holder: list[_ShardLink] = []
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    link = await _RespLink.open(node_url(self._url, host, port), self._client_name,
                                                lambda reply: self._handle(holder[0], reply))
            except REDIS_FAILURES as exc:
                log.warning("cannot open a pub/sub link to %s: %s", name, exc)
                self._slots.stale = True
                return None
            shard = _ShardLink(name, link, asyncio.get_running_loop().time())
            holder.append(shard)
            self._links[name] = shard
            self._wake.set()  # the supervisor watches the new link
            return shard

    def _send(self, shard: _ShardLink, kind: bytes, channels: list[str]) -> None:
        shard.owed.append((kind, list(channels), asyncio.get_running_loop().time()))
        shard.link.send(kind, *(channel.encode() for channel in channels))

    def _lose(self, channel: str) -> None:
        """`channel` is no longer subscribed anywhere: the supervisor places it again and the hub
        re-reads once it is."""
        shard = self._placed.pop(channel, None)
        if shard is not None:
            shard.channels.discard(channel)
        if channel in self._channels:
            self._homeless.add(channel)
            self._resync_due.add(channel)
            self._wake.set()
        self._release(channel)

    def _release(self, channel: str) -> None:
        for waiter in self._confirm.pop(channel, []):
            if not waiter.done():
                waiter.set_result(None)

    def _drop(self, shard: _ShardLink, *, resync: bool = True) -> None:
        if self._links.get(shard.node) is shard:
            del self._links[shard.node]
        shard.link.close()
        shard.owed.clear()
        for channel in list(shard.channels):
            if resync:
                self._lose(channel)
            else:
                self._placed.pop(channel, None)
                self._release(channel)
        shard.channels.clear()

    # replies and pushes from a link ----------------------------------------------------------

    def _handle(self, shard: _ShardLink, reply: Reply) -> None:
        if isinstance(reply, Exception):
            self._refused(shard, reply)
            return
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"smessage":
            channel = reply[1].decode()
            try:
                self._deliver(channel, reply[2])
            except Exception:
                log.exception("delivering a message of %s failed", channel)
        elif kind == b"ssubscribe":
            self._confirmed(shard, reply[1].decode())
        elif kind == b"sunsubscribe":
            self._unsubscribed(shard, reply[1].decode())

    def _owed_head(self, shard: _ShardLink, kind: bytes, channel: str) -> bool:
        """Take `channel` off the oldest command owed a reply, when it is that command's."""
        if not shard.owed:
            return False
        head_kind, channels, _ = shard.owed[0]
        if head_kind != kind or channel not in channels:
            return False
        channels.remove(channel)
        if not channels:
            shard.owed.popleft()
        return True

    def _confirmed(self, shard: _ShardLink, channel: str) -> None:
        self._owed_head(shard, _SUBSCRIBE, channel)
        if self._placed.get(channel) is shard:
            self._release(channel)
        self._resync_when_confirmed()

    def _unsubscribed(self, shard: _ShardLink, channel: str) -> None:
        if self._owed_head(shard, _UNSUBSCRIBE, channel):
            return  # the answer to our own SUNSUBSCRIBE
        if self._placed.get(channel) is shard:
            log.info("Redis Cluster moved the slot of %s; subscribing it on its new owner", channel)
            self._slots.stale = True
            self._lose(channel)

    def _refused(self, shard: _ShardLink, error: Exception) -> None:
        """An error answers the oldest command owed (MOVED for an SSUBSCRIBE sent on an old map)."""
        log.info("Redis Cluster node %s refused a command: %s", shard.node, error)
        self._slots.stale = True
        if not shard.owed:
            return
        kind, channels, _ = shard.owed.popleft()
        if kind == _SUBSCRIBE:
            for channel in channels:
                if self._placed.get(channel) is shard:
                    self._lose(channel)

    def _resync_when_confirmed(self) -> None:
        if (self._resync_due and not self._homeless
                and not any(shard.owes_subscriptions() for shard in self._links.values())):
            lost, self._resync_due = self._resync_due & self._channels, set()
            self.reconnects += 1
            if self._on_resync_channels is not None:
                self._on_resync_channels(lost)
                return
            self._on_resync()

    # supervision -----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while True:
            lost: list[asyncio.Future[Any]] = [shard.link.lost for shard in self._links.values()]
            waker: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waker, *lost], timeout=min(1.0, self._health),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
            self._wake.clear()
            try:
                self._check_links()
                if self._homeless:
                    await asyncio.sleep(backoff_delay(failures, base=0.1, cap=2.0))
                    await self._slots.refresh()
                    await self._place(sorted(self._homeless))
                failures = failures + 1 if self._homeless else 0
                self._resync_when_confirmed()
            except REDIS_FAILURES as exc:
                failures += 1
                log.warning("Redis Cluster topology unavailable (attempt %d): %s", failures, exc)
            except Exception:
                failures += 1
                log.exception("unexpected error in the Redis Cluster listener")

    def _check_alive(self, shard: _ShardLink, now: float) -> str | None:
        """Why `shard` counts as dead, or None; PINGs it every health interval (a half-open
        connection reads as silence forever)."""
        if shard.link.lost.done() or not shard.link.usable:
            return str(shard.link.lost.result() if shard.link.lost.done() else "") or "closed"
        if shard.link.heard:
            shard.link.heard = False
            shard.heard_at = now
        elif now - shard.heard_at > 3 * self._health + 1.0:
            return f"no answer for {now - shard.heard_at:.1f}s"
        if shard.owed and now - shard.owed[0][2] > SUBSCRIBE_TIMEOUT:
            return f"a command unanswered for over {SUBSCRIBE_TIMEOUT:.0f}s"
        if now - shard.pinged_at >= self._health:
            shard.pinged_at = now
            shard.link.send(b"PING")
        return None

    def _check_links(self) -> None:
        now = asyncio.get_running_loop().time()
        for shard in list(self._links.values()):
            problem = self._check_alive(shard, now)
            if problem is not None:
                log.warning("pub/sub link to %s lost (%s); resubscribing its channels elsewhere",
                            shard.node, problem)
                self._slots.stale = True
                self._drop(shard)
        # a link with no channel left is closed: a master that owns nothing of ours needs none
        for shard in list(self._links.values()):
            if not shard.owed and not shard.channels:
                self._drop(shard, resync=False)
