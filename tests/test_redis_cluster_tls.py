"""A hub on a Redis Cluster that speaks TLS only (§14: `rediss://` as with one Redis): clients,
the cluster bus and replication on TLS, certificates from a CA made by the test. The hub is told
to trust that CA with `?ssl_ca_certs=` in `REDIS_URL` (the first node URL's TLS options serve
every node), and refuses a cluster whose certificate it cannot verify.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from hub.broker import BrokerUnavailable
from hub.broker_redis_cluster import RedisClusterBroker
from hub.settings import Settings
from tests.conftest import RUN_ID
from tests.deploy.tls_ca import ThrowawayCA
from tests.redis_cluster import ClusterTls, RedisClusterNodes
from tests.test_processes import API_KEY, hub_process
from tests.test_redis_cluster import WAIT, users_on_every_master
from tests.wsutil import connect, publish

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                reason="needs redis-server and redis-cli")


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def tls_cluster(tmp_path: Path) -> RedisClusterNodes:
    ca = ThrowawayCA.create(tmp_path / "ca", name="hub cluster test CA")
    tls = ClusterTls(ca.ca_file, tmp_path / "node.pem", tmp_path / "node-key.pem")
    ca.issue(["127.0.0.1"], tls.cert_file, tls.key_file, client_auth=True)  # the bus checks both ends
    (tmp_path / "nodes").mkdir()
    return RedisClusterNodes(tmp_path / "nodes", tls=tls)


async def test_a_hub_delivers_through_a_tls_only_cluster_and_trusts_only_the_given_ca(
        settings: Settings, tls_cluster: RedisClusterNodes) -> None:
    try:
        await asyncio.to_thread(tls_cluster.start)  # its replicas in sync over TLS replication
        assert tls_cluster.url.startswith("rediss://")
        cluster_settings = replace(settings, redis_url=tls_cluster.url, redis_cluster=True,
                                   redis_channel_prefix=f"test{RUN_ID}:tls:")
        spread = await users_on_every_master(cluster_settings, tls_cluster, per_master=1)
        users = [user for group in spread.values() for user in group]
        async with (hub_process(cluster_settings, env={"REDIS_CLUSTER": "true"}) as (_, base),
                    httpx.AsyncClient(base_url=base, timeout=WAIT) as http):
            assert (await http.get("/readyz")).json() == {"status": "ready"}  # every master, on TLS
            sockets = {user_id: await connect(base.replace("http", "ws") + "/ws", token)
                       for user_id, token in users}
            first = await publish(http, API_KEY, list(sockets), "over.tls", {"n": 1})
            second = await publish(http, API_KEY, list(sockets), "over.tls", {"n": 2})
            for user_id, sock in sockets.items():
                frames = await sock.events(2, timeout=WAIT)
                assert [f["id"] for f in frames] == [first[str(user_id)], second[str(user_id)]]
                assert [f["data"]["n"] for f in frames] == [1, 2]
                await sock.close()

        untrusted = RedisClusterBroker(tls_cluster.url.split("?")[0])  # the system CAs only
        async with asyncio.timeout(WAIT):
            await untrusted.open(lambda _channel, _payload: None, lambda: None)
            try:
                with pytest.raises(BrokerUnavailable):
                    await untrusted.ping()
            finally:
                await untrusted.close()
    finally:
        tls_cluster.stop()
