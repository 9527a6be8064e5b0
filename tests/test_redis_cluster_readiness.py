"""`/readyz` of a hub process on a Redis Cluster through a failover (§10, §14; the README: on a
cluster every master must answer PING): a master SIGKILLed makes the hub report its broker down
(503 in the error shape) until the master's replica has taken its slots, then ready again, and
the killed master's users get everything published meanwhile, once and in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from hub.settings import Settings
from tests.redis_cluster import RedisClusterNodes, redis_cluster  # noqa: F401
from tests.test_processes import API_KEY, hub_process
from tests.test_redis_cluster import RECOVERY, WAIT, cluster_settings, users_on_every_master  # noqa: F401
from tests.wsutil import connect, publish

NOT_READY = {"error": "unavailable", "detail": "down: broker (redis-cluster)"}


@pytest.fixture
def backend() -> str:
    return "postgres"


async def readyz_until(http: httpx.AsyncClient, wanted: Callable[[httpx.Response], bool], what: str,
                       ) -> httpx.Response:
    """Poll /readyz until an answer is `wanted` (within RECOVERY seconds); that answer."""
    try:
        async with asyncio.timeout(RECOVERY):
            while True:
                answer = await http.get("/readyz")
                if wanted(answer):
                    return answer
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"/readyz never {what} within {RECOVERY:.0f}s")


async def test_readyz_is_503_while_a_master_is_gone_and_200_once_its_replica_took_over(
        cluster_settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    spread = await users_on_every_master(cluster_settings, redis_cluster, per_master=1)
    victim = next(iter(spread))
    ((user_id, token),) = spread[victim]
    killed = False
    try:
        async with (hub_process(cluster_settings, env={"REDIS_CLUSTER": "true"}) as (_, base),
                    httpx.AsyncClient(base_url=base, timeout=WAIT) as http):
            sock = await connect(base.replace("http", "ws") + "/ws", token)
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            ids = list((await publish(http, API_KEY, [user_id], "before")).values())
            assert [f["id"] for f in await sock.events(1, timeout=WAIT)] == ids

            redis_cluster.kill(victim)
            killed = True
            down = await readyz_until(http, lambda r: r.status_code != 200, "reported the killed master")
            assert (down.status_code, down.json()) == (503, NOT_READY)
            ids += (await publish(http, API_KEY, [user_id], "during")).values()  # stored; Redis may refuse

            await readyz_until(http, lambda r: r.status_code == 200, "was ready again")
            assert victim not in redis_cluster.masters()  # the replica owns the slots now
            ids += (await publish(http, API_KEY, [user_id], "after")).values()
            frames = await sock.events(2, timeout=RECOVERY)
            assert [f["id"] for f in frames] == ids[1:]
            assert [f["name"] for f in frames] == ["during", "after"]
            await sock.silent(0.5)
            await sock.close()
    finally:
        if killed:
            redis_cluster.launch(victim)
            await asyncio.to_thread(redis_cluster.wait_ok)
