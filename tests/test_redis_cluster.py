"""The hub on a real Redis Cluster (§14): sharded pub/sub across 3 masters, a master killed and
its replica promoted, a slot moved to another master, the parser keys, two hub processes.

The cluster (tests/redis_cluster.py) is shared by the session; a test that kills a node starts
it again (it rejoins as a replica) and waits for the cluster to be whole before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from hub.broker import BrokerUnavailable, user_channel
from hub.broker_redis_cluster import RedisClusterBroker
from hub.presence_redis import RedisPresence
from hub.settings import Settings
from tests.conftest import RUN_ID, serve_hub, unique_name
from tests.redis_cluster import RedisClusterNodes, cli, redis_cluster, slot_owner  # noqa: F401
from tests.sseutil import STREAM, open_stream
from tests.sseutil import ticket as stream_ticket
from tests.test_processes import API_KEY, hub_process
from tests.wsutil import Socket, connect, make_users, publish

WAIT = 10.0
RECOVERY = 20.0  # failover (node timeout 2 s + election) and the re-read, on a loaded machine
_ids = itertools.count(1)


@pytest.fixture
def backend() -> str:
    return "postgres"


def channel(label: str) -> str:
    return f"test{RUN_ID}:cluster:{label}:{next(_ids)}"


def channels_on_every_master(nodes: RedisClusterNodes, per_master: int = 2) -> dict[int, list[str]]:
    """Fresh channel names, `per_master` of them in slots of each master (by master port)."""
    masters = nodes.masters()
    found: dict[int, list[str]] = defaultdict(list)
    while any(len(found[port]) < per_master for port in masters):
        name = channel("spread")
        owner = slot_owner(masters, keyslot(name))
        if len(found[owner]) < per_master:
            found[owner].append(name)
    return dict(found)


def keyslot(name: str) -> int:
    return int(key_slot(name.encode()))


class Inbox:
    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.resyncs = 0
        self.resynced: set[str] = set()  # the channels of every partial re-read

    def deliver(self, name: str, payload: bytes) -> None:
        self.messages[name].append(payload)

    def on_resync(self) -> None:
        self.resyncs += 1

    def on_resync_channels(self, names: Collection[str]) -> None:
        self.resyncs += 1
        self.resynced |= set(names)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"{what}: not within {timeout:.0f}s")


@pytest.fixture
async def cluster_broker(redis_cluster: RedisClusterNodes) -> AsyncIterator[tuple[RedisClusterBroker, Inbox]]:  # noqa: F811
    broker = RedisClusterBroker(redis_cluster.url, client_name=f"hub-test-{RUN_ID}-{next(_ids)}-pubsub",
                                health_check_interval=1.0)
    inbox = Inbox()
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync, inbox.on_resync_channels)
    try:
        yield broker, inbox
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()


async def publish_until_heard(broker: RedisClusterBroker, inbox: Inbox, names: list[str],
                              timeout: float) -> None:
    """Publish a numbered message on every channel every 0.1 s until each channel has heard one
    published after this call began (publishes may fail meanwhile)."""
    start = {name: len(inbox.messages[name]) for name in names}
    async with asyncio.timeout(timeout):
        for n in itertools.count():
            with contextlib.suppress(BrokerUnavailable):  # while the cluster heals
                await broker.publish([(name, b"probe %d" % n) for name in names])
            await asyncio.sleep(0.1)
            if all(len(inbox.messages[name]) > start[name] for name in names):
                return


async def listening_on_every_master(nodes: RedisClusterNodes, broker: RedisClusterBroker, inbox: Inbox,
                                    ) -> tuple[dict[int, list[str]], list[str]]:
    """Channels on every master, subscribed and heard: by master port, and all of them."""
    spread = channels_on_every_master(nodes)
    names = [name for group in spread.values() for name in group]
    async with asyncio.timeout(WAIT):
        for name in names:
            await broker.subscribe(name)
    await publish_until_heard(broker, inbox, names, WAIT)
    return spread, names


async def pubsub_links(nodes: RedisClusterNodes, client_name: str) -> dict[int, int]:
    """Connections named `client_name` on each live master, by port (only those with any)."""
    found: dict[int, int] = {}
    for port in nodes.masters():
        admin = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            async with asyncio.timeout(WAIT):
                clients = await admin.client_list()
        finally:
            await admin.aclose()
        count = sum(1 for c in clients if c.get("name") == client_name)
        if count:
            found[port] = count
    return found


# the broker on the cluster ------------------------------------------------------------------

async def test_one_sharded_link_per_master_that_owns_a_channel(
        redis_cluster: RedisClusterNodes,  # noqa: F811
        cluster_broker: tuple[RedisClusterBroker, Inbox]) -> None:
    broker, inbox = cluster_broker
    spread = channels_on_every_master(redis_cluster, per_master=20)
    names = [name for group in spread.values() for name in group]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(broker.subscribe(name) for name in names))
        await broker.publish([(name, name.encode()) for name in names])
    await until(lambda: all(inbox.messages[name] == [name.encode()] for name in names), WAIT,
                "a message on every channel")
    assert await pubsub_links(redis_cluster, broker._client_name) == dict.fromkeys(spread, 1)
    first_master = next(iter(spread))
    async with asyncio.timeout(WAIT):  # a master left with no channel of ours loses its link
        for name in spread[first_master]:
            await broker.unsubscribe(name)
    await until(lambda: len(broker._links) == len(spread) - 1, WAIT, "the idle link closed")
    assert inbox.resyncs == 0


async def test_a_killed_master_is_replaced_and_its_channels_resubscribed(
        redis_cluster: RedisClusterNodes,  # noqa: F811
        cluster_broker: tuple[RedisClusterBroker, Inbox]) -> None:
    broker, inbox = cluster_broker
    spread, names = await listening_on_every_master(redis_cluster, broker, inbox)
    victim = next(iter(spread))
    redis_cluster.kill(victim)
    try:
        await publish_until_heard(broker, inbox, names, RECOVERY)
        await until(lambda: inbox.resyncs >= 1, WAIT, "on_resync after the failover")
        assert victim not in redis_cluster.masters()
        assert inbox.resynced == set(spread[victim])  # the other masters' channels were left be
    finally:
        redis_cluster.launch(victim)
        await asyncio.to_thread(redis_cluster.wait_ok)


async def test_a_moved_slot_is_followed_to_its_new_master(
        redis_cluster: RedisClusterNodes,  # noqa: F811
        cluster_broker: tuple[RedisClusterBroker, Inbox]) -> None:
    broker, inbox = cluster_broker
    spread, names = await listening_on_every_master(redis_cluster, broker, inbox)
    source = next(iter(spread))
    moved = spread[source][0]
    target = next(port for port in spread if port != source)
    other = RedisClusterBroker(redis_cluster.url, client_name=f"hub-test-{RUN_ID}-{next(_ids)}-pubsub")
    async with asyncio.timeout(WAIT):
        await other.open(Inbox().deliver, lambda: None)  # a publisher that reads the map now
        await other.publish([(moved, b"before the move")])
    await asyncio.to_thread(move_slot, redis_cluster, keyslot(moved), source, target)
    try:
        await until(lambda: inbox.resyncs >= 1, RECOVERY, "on_resync after the slot moved")
        await publish_until_heard(broker, inbox, names, WAIT)
        assert broker._placed[moved].node.endswith(f":{target}")
        assert inbox.resynced == {name for name in names if keyslot(name) == keyslot(moved)}
        async with asyncio.timeout(WAIT):  # its map is stale: MOVED, then redis-py's redirection
            await other.publish([(moved, b"after the move")])
        assert other._slots.stale  # it was refused with MOVED, so the next publish reads the map
        await until(lambda: inbox.messages[moved][-1] == b"after the move", WAIT, "the redirected one")
    finally:
        async with asyncio.timeout(WAIT):
            await other.close()
        await asyncio.to_thread(move_slot, redis_cluster, keyslot(moved), target, source)


def move_slot(nodes: RedisClusterNodes, slot: int, source: int, target: int) -> None:
    """Migrate `slot` from the master on `source` to the one on `target`, the way `redis-cli
    --cluster reshard` does it: IMPORTING, MIGRATING, the keys, then NODE on both and the rest."""
    source_id, target_id = nodes.node_id(source), nodes.node_id(target)
    cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    while keys := cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
        cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    for port in (target, source, *(p for p in nodes.masters() if p not in (source, target))):
        cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
    nodes.wait_ok()


# hub processes on the cluster ---------------------------------------------------------------

@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: RedisClusterNodes) -> Settings:  # noqa: F811
    return replace(settings, redis_url=redis_cluster.url, redis_cluster=True,
                   redis_channel_prefix=f"test{RUN_ID}:")


async def users_on_every_master(settings: Settings, nodes: RedisClusterNodes,
                                per_master: int = 2) -> dict[int, list[tuple[int, str]]]:
    """(user_id, token) pairs whose channels lie in slots of each master, by master port."""
    masters = nodes.masters()
    found: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for _ in range(20):
        for user_id, token in await make_users(settings, 10):
            owner = slot_owner(masters, keyslot(user_channel(settings.redis_channel_prefix, user_id)))
            if len(found[owner]) < per_master:
                found[owner].append((user_id, token))
        if all(len(found[port]) >= per_master for port in masters):
            return dict(found)
    pytest.fail("could not spread users over every master")


class Load:
    """Publishes one event to every user every `interval` through alternating hubs until
    stopped; keeps the ids each user's events got."""

    def __init__(self, bases: list[str], user_ids: list[int], interval: float = 0.1) -> None:
        self.bases = bases
        self.user_ids = user_ids
        self.interval = interval
        self.ids: dict[int, list[int]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def _run(self) -> None:
        clients = [httpx.AsyncClient(base_url=base, timeout=WAIT) for base in self.bases]
        try:
            for n in itertools.count():
                if self._stopping.is_set():
                    return
                events = await publish(clients[n % len(clients)], API_KEY, self.user_ids, "load", {"n": n})
                for user_id, event_id in events.items():
                    self.ids[int(user_id)].append(event_id)
                await asyncio.sleep(self.interval)
        finally:
            for client in clients:
                await client.aclose()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """After the publish in flight, whose ids count (its events are committed)."""
        assert self._task is not None
        self._stopping.set()
        async with asyncio.timeout(WAIT):
            await self._task  # a failed publish fails the test


async def received_exactly(sockets: dict[int, list[Socket]], ids: dict[int, list[int]],
                           timeout: float) -> None:
    """Every socket of every user gets exactly its user's ids, once and in order."""
    for user_id, user_sockets in sockets.items():
        expected = ids[user_id]
        for sock in user_sockets:
            frames = await sock.events(len(expected), timeout=timeout)
            assert [f["id"] for f in frames] == expected, user_id
            await sock.silent(0.3)


async def open_sockets(bases: list[str], users: list[tuple[int, str]]) -> dict[int, list[Socket]]:
    """A socket per user on each hub."""
    return {user_id: [await connect(base.replace("http", "ws") + "/ws", token) for base in bases]
            for user_id, token in users}


UnderLoad = tuple[Load, list[str], dict[int, list[int]]]


@contextlib.asynccontextmanager
async def two_hubs_under_load(settings: Settings, nodes: RedisClusterNodes, *, per_master: int = 2,
                              interval: float = 0.1) -> AsyncIterator[UnderLoad]:
    """Two hub processes on the cluster, a socket on each for every user (users on every master),
    events published through both: yields the load, the hubs' base URLs and the users by master.
    On leaving, the load stops and every socket must have got exactly its user's events."""
    spread = await users_on_every_master(settings, nodes, per_master)
    users = [user for group in spread.values() for user in group]
    env = {"REDIS_CLUSTER": "true"}
    async with hub_process(settings, env=env) as (_, first), hub_process(settings, env=env) as (_, second):
        sockets = await open_sockets([first, second], users)
        load = Load([first, second], [user_id for user_id, _ in users], interval)
        load.start()
        try:
            await until(lambda: all(len(load.ids[u]) >= 5 for u, _ in users), WAIT, "load started")
            yield load, [first, second], {port: [u for u, _ in group] for port, group in spread.items()}
        finally:
            await load.stop()
        await received_exactly(sockets, load.ids, RECOVERY)


async def load_goes_on(load: Load, events: int = 10) -> None:
    user_id = load.user_ids[0]
    count = len(load.ids[user_id])
    await until(lambda: len(load.ids[user_id]) >= count + events, RECOVERY, "the load went on")


async def test_two_hubs_on_the_cluster_deliver_everything_once_in_order(
        cluster_settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    async with two_hubs_under_load(cluster_settings, redis_cluster, interval=0.0) as (load, bases, _):
        await load_goes_on(load, 30)
        async with httpx.AsyncClient(base_url=bases[0]) as http:
            assert (await http.get("/readyz")).json() == {"status": "ready"}


async def test_a_master_killed_under_load_loses_and_repeats_nothing(
        cluster_settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    victim: int | None = None
    try:
        async with two_hubs_under_load(cluster_settings, redis_cluster) as (load, _, spread):
            victim = next(iter(spread))
            redis_cluster.kill(victim)
            await asyncio.sleep(1.0)  # publishes during the outage: left to the relay and re-read
            await load_goes_on(load)
    finally:
        if victim is not None:
            redis_cluster.launch(victim)
            await asyncio.to_thread(redis_cluster.wait_ok)


async def test_a_slot_moved_under_load_loses_and_repeats_nothing(
        cluster_settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    moved: tuple[int, int, int] | None = None
    try:
        async with two_hubs_under_load(cluster_settings, redis_cluster) as (load, _, spread):
            source, target = list(spread)[:2]
            slot = keyslot(user_channel(cluster_settings.redis_channel_prefix, spread[source][0]))
            moved = (slot, source, target)
            await asyncio.to_thread(move_slot, redis_cluster, slot, source, target)
            await load_goes_on(load)
    finally:
        if moved is not None:
            slot, source, target = moved
            await asyncio.to_thread(move_slot, redis_cluster, slot, target, source)


async def test_a_whole_cluster_restart_loses_and_repeats_nothing(
        cluster_settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    async with two_hubs_under_load(cluster_settings, redis_cluster, per_master=1) as (load, _, _):
        for port in redis_cluster.ports:  # every node at once, as a power cut would
            redis_cluster.kill(port)
        await asyncio.sleep(1.0)
        for port in redis_cluster.ports:  # back empty (no persistence), same topology
            redis_cluster.launch(port)
        await asyncio.to_thread(redis_cluster.wait_ok)
        await load_goes_on(load)


async def test_a_parse_request_completes_through_the_worker_on_the_cluster(
        cluster_settings: Settings) -> None:
    from tests.conftest import register
    from tests.page_server import TITLE, serve_pages
    from tests.parser_worker_process import run_worker

    settings = replace(cluster_settings, redis_channel_prefix=f"{unique_name('pc')}:")
    async with serve_hub(settings) as hub, serve_pages() as pages:
        alice = await register(hub.http)
        sock = await connect(hub.ws_url, alice.access_token)
        async with run_worker(hub, REDIS_CLUSTER="true", PARSER_ALLOW_PRIVATE="1") as worker:
            answer = await hub.http.post("/api/v1/parse", json={"url": pages.url("/page")},
                                         headers=alice.headers)
            assert answer.status_code == 202, answer.text
            (frame,) = await sock.events(1, timeout=20)
            assert frame["name"] == "parse.completed"
            assert frame["data"]["status"] == "success"
            assert frame["data"]["title"] == TITLE
            assert await worker.stop() == 0
        await sock.close()
        assert (await hub.http.get("/readyz")).json() == {"status": "ready"}


async def test_an_unreachable_cluster_is_reported_not_waited_for() -> None:
    from tests.conftest import free_port

    broker = RedisClusterBroker(f"redis://127.0.0.1:{free_port()}", client_name=f"hub-test-{RUN_ID}-dead")
    inbox = Inbox()
    async with asyncio.timeout(WAIT):
        await broker.open(inbox.deliver, inbox.on_resync)  # the listener keeps trying
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(BrokerUnavailable):
                await broker.ping()
            with pytest.raises(BrokerUnavailable):
                await broker.publish([(channel("dead"), b"lost")])
            await broker.subscribe(channel("dead"))  # remembered for when the cluster answers
    finally:
        async with asyncio.timeout(WAIT):
            await broker.close()
    assert broker.name == "redis-cluster"  # what /readyz names: "down: broker (redis-cluster)"


async def test_a_cluster_with_a_password(tmp_path: Path) -> None:
    """AUTH as with one Redis: the password of the first node URL serves every link."""
    nodes = RedisClusterNodes(tmp_path, password="cluster-secret", replicas=0)
    await asyncio.to_thread(nodes.start)
    try:
        client_name = f"hub-test-{RUN_ID}-{next(_ids)}-pubsub"
        broker = RedisClusterBroker(nodes.url, client_name=client_name)
        inbox = Inbox()
        async with asyncio.timeout(WAIT):
            await broker.open(inbox.deliver, inbox.on_resync)
        try:
            _, names = await listening_on_every_master(nodes, broker, inbox)
            async with asyncio.timeout(WAIT):
                await broker.ping()
            assert len(names) == 6
        finally:
            async with asyncio.timeout(WAIT):
                await broker.close()
        unauthenticated = RedisClusterBroker(nodes.url.replace(":cluster-secret@", ""))
        async with asyncio.timeout(WAIT):
            await unauthenticated.open(Inbox().deliver, lambda: None)
            with pytest.raises(BrokerUnavailable):
                await unauthenticated.publish([(names[0], b"refused")])
            await unauthenticated.close()
    finally:
        nodes.stop()


async def test_presence_on_the_cluster_counts_processes_and_sweeps_a_dead_one(
        redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    """Presence's scripts run on a cluster: every key has the one `{presence}` hash tag."""
    prefix = f"test{RUN_ID}-{unique_name('p')}:"
    first, second = (RedisPresence(redis_cluster.url, prefix, ttl=2.0, cluster=True)
                     for _ in range(2))
    try:
        await first.heartbeat([])
        await second.heartbeat([])
        assert await first.arrive(1) is True
        assert await second.arrive(1) is False
        assert await first.leave(1) is False
        assert await second.leave(1) is True
        assert await first.settle(1) is True
        assert await first.arrive(2) is True
        assert await second.online([1, 2]) == {2}
        await asyncio.sleep(2.2)  # the first process stops heartbeating
        assert await second.heartbeat([]) == ([2], [], 0)
    finally:
        await first.close()
        await second.close()


async def test_a_stream_ticket_works_once_on_any_hub_of_the_cluster(
        cluster_settings: Settings, redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    ((user_id, token),) = await make_users(cluster_settings, 1)
    async with serve_hub(cluster_settings) as issuing, serve_hub(cluster_settings) as serving:
        value = await stream_ticket(issuing.http, token)
        async with open_stream(serving.http, params={"ticket": value}) as stream:
            assert stream.welcome["user_id"] == user_id
        again = await issuing.http.get(STREAM, params={"ticket": value})
        assert again.status_code == 401
