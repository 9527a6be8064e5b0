"""The benchmark's load generator against a real hub: it counts every injected event delivered in
order, and flags misrouted, repeated and skipped ones (so a bench run that loses events says so)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from urllib.parse import urlparse

import pytest

from bench.cluster_target import ClusterPublisher
from bench.loadgen import HUB, Fleet, Injector, RespPublisher, rfc3339_now
from hub.settings import Settings
from tests.conftest import RunningHub, register, serve_hub
from tests.redis_cluster import RedisClusterNodes, redis_cluster  # noqa: F401
from tests.wsutil import make_users


@pytest.fixture
def backend() -> str:
    return "postgres"  # the injected path is Redis pub/sub


def crafted(prefix: bytes, channel_user: int, event_id: int, user: int, seq: int) -> tuple[bytes, bytes]:
    event = b'{"id":%d,"name":"bench","data":{"u":%d,"s":%d,"t":%.6f},"created_at":"%s"}' % (
        event_id, user, seq, time.time(), rfc3339_now())
    return b"%snotifications:%d" % (prefix, channel_user), event


async def test_load_generator_counts_deliveries_and_flags_bad_ones(hub: RunningHub) -> None:
    accounts = [await register(hub.http) for _ in range(3)]
    tokens = {account.id: account.access_token for account in accounts}
    fleet = Fleet(hub.ws_url, HUB, tokens.__getitem__)
    redis = urlparse(hub.settings.redis_url)
    publisher = RespPublisher(redis.hostname or "127.0.0.1", redis.port or 6379)
    prefix = hub.settings.redis_channel_prefix.encode()
    try:
        async with asyncio.timeout(30):
            _, failures = await fleet.connect(list(tokens))
            assert failures == 0
            await publisher.open()
            clients = list(fleet.clients.values())
            injector = Injector(HUB, prefix)
            stamp, created = time.time(), rfc3339_now()
            publisher.publish([injector.message(c, stamp, created) for c in clients for _ in range(10)])
            assert await fleet.wait_delivered(30, limit=10)
            counters = fleet.counters
            assert (counters.skipped, counters.late_or_duplicate, counters.misrouted) == (0, 0, 0)
            assert len(counters.latencies) == 30
            assert all(c.next_seq == 11 for c in clients)

            counters.reset()
            first, second = clients[0], clients[1]
            publisher.publish([
                crafted(prefix, second.user_id, second.last_id + 1, first.user_id, 11),  # misrouted
                crafted(prefix, first.user_id, first.last_id + 1, first.user_id, 5),  # repeated seq
                crafted(prefix, first.user_id, first.last_id + 2, first.user_id, 15),  # skips 11..14
            ])
            await publisher.flushed(limit=5)
            while counters.misrouted + counters.late_or_duplicate + counters.delivered < 3:
                await asyncio.sleep(0.02)
            assert counters.misrouted == 1
            assert counters.late_or_duplicate == 1
            assert counters.skipped == 4
            assert counters.delivered == 1
            assert fleet.unexpected_closes == []
    finally:
        async with asyncio.timeout(15):
            await fleet.disconnect()
            await publisher.close()


async def test_cluster_publisher_reaches_two_hubs_on_every_master(
        settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    """The `hub-cluster` target's path: SPUBLISH to each channel's master, clients spread over
    two hubs on the cluster; every event delivered once, in order, none refused."""
    cluster_settings = replace(settings, redis_url=redis_cluster.url, redis_cluster=True)
    users = await make_users(cluster_settings, 24)
    tokens = dict(users)
    publisher = ClusterPublisher("127.0.0.1", redis_cluster.ports[0])
    async with serve_hub(cluster_settings) as first, serve_hub(cluster_settings) as second:
        fleet = Fleet([first.ws_url, second.ws_url], HUB, tokens.__getitem__)
        try:
            async with asyncio.timeout(30):
                _, failures = await fleet.connect(list(tokens))
                assert failures == 0
                await publisher.open()
                assert publisher.masters == 3
                clients = list(fleet.clients.values())
                injector = Injector(HUB, settings.redis_channel_prefix.encode())
                stamp, created = time.time(), rfc3339_now()
                publisher.publish([injector.message(c, stamp, created) for c in clients for _ in range(10)])
                await publisher.flushed(limit=10)
                assert publisher.refused == 0
                assert await fleet.wait_delivered(240, limit=10)
                counters = fleet.counters
                assert (counters.skipped, counters.late_or_duplicate, counters.misrouted) == (0, 0, 0)
                assert all(c.next_seq == 11 for c in clients)
        finally:
            async with asyncio.timeout(15):
                await fleet.disconnect()
                await publisher.close()
