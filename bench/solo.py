"""One hub on its own (PostgreSQL + private Redis), for the profiler and the issue-3 figure."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from bench.loadgen import Fleet, RespPublisher
from bench.scenarios import Bench, Params
from bench.services import BenchDatabase, PrivateRedis, cores, raise_nofile
from bench.targets import TARGETS, hub_environment, migrate_hub, start, token_issuer


@contextlib.asynccontextmanager
async def running_hub(users: int, params: Params, out: Path, log: object,
                      transport: str = "ws") -> AsyncIterator[Bench]:
    """A migrated database with `users` users, a private Redis, the hub pinned to the server core
    and this process to the others; everything is removed on exit. The fleet's clients use
    `transport`: "ws" (/ws) or "stream" (the HTTP event stream)."""
    server_cpus, loadgen_cpus = cores()
    os.sched_setaffinity(0, loadgen_cpus)
    raise_nofile()
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    secret, api_key = secrets.token_urlsafe(48), secrets.token_urlsafe(24)
    token = token_issuer(secret)

    redis = PrivateRedis(loadgen_cpus)
    database = BenchDatabase()
    try:
        redis.start()
        await database.create()
        env = hub_environment(database.url, redis.url, secret, api_key)
        migrate_hub(env)
        ids = await database.add_users(users, "solo")
        server = await start(TARGETS["hub"], server_cpus, out, redis_url=redis.url, secret=secret,
                             hub_env=env)
        publisher = RespPublisher("127.0.0.1", redis.port)
        await publisher.open()
        url = server.ws_url if transport == "ws" else server.http_url + "/api/v1/stream"
        fleet = Fleet(url, "hub", token, transport)
        bench = Bench(server, fleet, publisher, params, redis.pids(), ids, log, api_key,  # type: ignore[arg-type]
                      server_cpus=server_cpus)
        bench.results["loadgen_cpus"] = sorted(loadgen_cpus)
        bench.results["postgresql"] = await database.configuration()
        try:
            yield bench
        finally:
            await fleet.disconnect()
            await publisher.close()
            server.stop()
    finally:
        await database.drop()
        redis.stop()
