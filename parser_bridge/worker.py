"""`python -m parser_bridge.worker`: the parser of protocol §7 (compatible with seed 001).

Takes jobs reliably: a taker `BLMOVE`s jobs from `parser:tasks` to this worker's own
`parser:processing:{worker}` list, and a job is removed from there only after its answer is
stored, while a
heartbeat key `parser:worker:{worker}` says the worker lives. A reaper in every worker moves
the jobs of workers whose heartbeat expired back to `parser:tasks`, so a job taken by a worker
that died is done by another (at least once; the hub keeps the first answer). Answers go to
`parser:results:{id}` with an expiry. SIGTERM or SIGINT: stop taking jobs, finish the fetches
in flight, give back what could not be finished, exit 0.

Fairness between users (`fair_queue`): PARSER_CONCURRENCY fetch slots, at most
PARSER_USER_CONCURRENCY of them for one user's jobs (by the `user_id` the hub adds to a job);
the taker takes jobs while a slot would otherwise stay idle, so a job of another user behind
one user's slow pages is found and started at once. Up to PARSER_MAX_WAITING taken jobs wait
in this worker for a slot.

On a Redis Cluster (REDIS_CLUSTER=true, REDIS_URL naming its nodes as for the hub) the
processing list is `{parser:tasks}:processing:{worker}`: its hash tag puts it in the slot of
`parser:tasks`, so BLMOVE between the two stays one atomic command; every other key keeps its
§7 name.

Environment, read once at start with the hub's reader (`hub.env`; a bad value is one line on
stderr and exit status 2): REDIS_URL (required), REDIS_CLUSTER and REDIS_CHANNEL_PREFIX (as the
hub's),
PARSER_ALLOW_PRIVATE (0/1), PARSER_ALLOW_NETWORKS (CIDRs allowed even if private, e.g. an
intranet: `10.20.0.0/16,192.168.5.7/32`), PARSER_CONCURRENCY (8), PARSER_USER_CONCURRENCY (4),
PARSER_MAX_WAITING (1000), PARSER_FETCH_TIMEOUT (seconds, 10), PARSER_RESULT_TTL (seconds,
3600), PARSER_HEARTBEAT_TTL (seconds, 15), LOG_LEVEL (INFO).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import cast

from pydantic import ValidationError

from hub.address_policy import Network, parse_networks
from hub.env import LOG_LEVELS, REDIS_URL_SCHEMES, ConfigError, EnvReader, report
from hub.redis_clients import REDIS_FAILURES, RedisClient, redis_client
from hub.supervise import backoff_delay
from parser_bridge.parse.fair_queue import FairQueue
from parser_bridge.parse.fetch import PageFetcher
from parser_bridge.parse.result import ParseJob, result_key, tasks_key

log = logging.getLogger("parser_bridge.worker")
TAKE_TIMEOUT = 1  # seconds a consumer blocks on BLMOVE before it looks at the stop flag


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str
    redis_cluster: bool = False
    key_prefix: str = ""
    allow_private: bool = False
    allowed_networks: tuple[Network, ...] = ()
    concurrency: int = 8
    user_concurrency: int = 4
    max_waiting: int = 1000
    fetch_timeout: float = 10.0
    result_ttl: int = 3600
    heartbeat_ttl: float = 15.0
    worker_id: str = ""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerConfig:
        """Read the worker's variables (module docstring); raises ConfigError on a bad one."""
        r = EnvReader(environ)
        return cls(
            redis_url=r.required_url("REDIS_URL", REDIS_URL_SCHEMES,
                                     "the hub's Redis, e.g. redis://host:6379/0"),
            redis_cluster=r.redis_cluster("REDIS_CLUSTER"),
            key_prefix=r.text("REDIS_CHANNEL_PREFIX", ""),
            allow_private=r.flag("PARSER_ALLOW_PRIVATE"),
            allowed_networks=r.parsed("PARSER_ALLOW_NETWORKS", parse_networks),
            concurrency=r.integer("PARSER_CONCURRENCY", 8, minimum=1, maximum=1000),
            user_concurrency=r.integer("PARSER_USER_CONCURRENCY", 4, minimum=1, maximum=1000),
            max_waiting=r.integer("PARSER_MAX_WAITING", 1000, minimum=1, maximum=1_000_000),
            fetch_timeout=r.number("PARSER_FETCH_TIMEOUT", 10.0, minimum=0.1, maximum=600),
            result_ttl=r.integer("PARSER_RESULT_TTL", 3600, minimum=1, maximum=30 * 86400),
            heartbeat_ttl=r.number("PARSER_HEARTBEAT_TTL", 15.0, minimum=1, maximum=3600),
            worker_id=f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            log_level=r.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
        )


class ParserWorker:
    """One worker process: a taker, `concurrency` fetch slots shared fairly between users, a
    heartbeat and a reaper."""

    def __init__(self, config: WorkerConfig, fetcher: PageFetcher) -> None:
        self.config = config
        self._fetcher = fetcher
        prefix = config.key_prefix
        self.tasks = tasks_key(prefix)
        processing = (f"{{{self.tasks}}}:processing:" if config.redis_cluster
                      else f"{prefix}parser:processing:")
        self.processing = processing + config.worker_id
        self._processing_pattern = processing + "*"
        self._heartbeat_prefix = f"{prefix}parser:worker:"
        self._stopping = asyncio.Event()
        self._redis: RedisClient | None = None
        self._jobs: FairQueue[tuple[ParseJob, bytes]] = FairQueue(
            slots=config.concurrency, per_user=config.user_concurrency, max_waiting=config.max_waiting)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Work until `stop()`; then finish the fetches in flight (bounded) and return."""
        self._redis = redis_client(
            self.config.redis_url, cluster=self.config.redis_cluster, socket_connect_timeout=5,
            socket_keepalive=True, socket_timeout=TAKE_TIMEOUT + 5,
            max_connections=self.config.concurrency + 4)
        await self._first_beat()  # before taking any job, so no reaper takes ours for a dead worker's
        upkeep = [
            asyncio.create_task(self._every(self.config.heartbeat_ttl / 3, self._beat), name="heartbeat"),
            asyncio.create_task(self._every(self.config.heartbeat_ttl / 2, self._reap), name="reaper"),
            asyncio.create_task(self._take(), name="taker"),
        ]
        slots = [asyncio.create_task(self._fetch_slot(n), name=f"fetch slot {n}")
                 for n in range(self.config.concurrency)]
        log.info("parser worker %s: %d fetch slots (%d per user) on %s", self.config.worker_id,
                 self.config.concurrency, self.config.user_concurrency, self.tasks)
        try:
            await self._stopping.wait()
            log.info("stopping: finishing the fetches in flight")
            await self._jobs.close()  # jobs still waiting are given back below
            _done, late = await asyncio.wait(slots, timeout=self.config.fetch_timeout * 2 + 5)
            for task in late:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
        finally:
            for task in [*upkeep, *slots]:
                task.cancel()
            await asyncio.gather(*upkeep, *slots, return_exceptions=True)
            await self._give_back()
            await self._redis.aclose()
        log.info("parser worker %s stopped", self.config.worker_id)

    async def _take(self) -> None:
        """Move jobs from the queue to this worker's processing list while a slot would idle."""
        assert self._redis is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TAKE_TIMEOUT):
                        await self._jobs.until_wanted()
                if not self._jobs.wants_more():
                    continue
                raw = await self._redis.blmove(self.tasks, self.processing, TAKE_TIMEOUT, "RIGHT", "LEFT")
                if raw is not None:
                    await self._hold(cast("bytes", raw))  # the stub says str; redis-py gives bytes
                failures = 0
            except REDIS_FAILURES as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                log.warning("taking jobs: Redis error (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _hold(self, raw: bytes) -> None:
        assert self._redis is not None
        try:
            job = ParseJob.model_validate_json(raw)
        except ValidationError:
            log.warning("dropping a malformed job: %r", raw[:200])
            await self._finished(raw)
            return
        await self._jobs.put(job.user_id, (job, raw))  # never full: the taker waits for room

    async def _fetch_slot(self, number: int) -> None:
        while (taken := await self._jobs.get()) is not None:
            user, (job, raw) = taken
            try:
                await self._answer(job, raw)
            except REDIS_FAILURES as exc:
                # the job stays in the processing list; it is given back when this worker stops
                log.warning("slot %d: could not store the answer to job %d (%s)", number, job.id, exc)
                await asyncio.sleep(backoff_delay(1, base=0.5, cap=2.0))
            finally:
                await self._jobs.done(user)

    async def _answer(self, job: ParseJob, raw: bytes) -> None:
        assert self._redis is not None
        log.info("job %d: fetching %s", job.id, job.url)
        result = await self._fetcher.parse(job.url)
        await self._redis.set(result_key(self.config.key_prefix, job.id), result.encode(),
                              ex=self.config.result_ttl)
        await self._finished(raw)
        log.info("job %d: %s%s", job.id, result.status,
                 f" ({result.error})" if result.status == "failure" else "")

    async def _finished(self, raw: bytes) -> None:
        assert self._redis is not None
        await self._redis.lrem(self.processing, 1, cast("str", raw))  # the stub says str; bytes work

    async def _first_beat(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._beat()
                return
            except REDIS_FAILURES as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                log.warning("Redis is not reachable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _beat(self) -> None:
        assert self._redis is not None
        await self._redis.set(self._heartbeat_prefix + self.config.worker_id, b"1",
                              px=int(self.config.heartbeat_ttl * 1000))

    async def _reap(self) -> None:
        """Give the jobs of workers whose heartbeat expired back to the queue (taken first)."""
        assert self._redis is not None
        async for key in self._redis.scan_iter(match=self._processing_pattern, count=100):
            name = key.decode()
            owner = name.rsplit(":", 1)[1]
            if owner == self.config.worker_id or await self._redis.exists(self._heartbeat_prefix + owner):
                continue
            moved = 0
            while await self._redis.lmove(name, self.tasks, "RIGHT", "RIGHT") is not None:
                moved += 1
            if moved:
                log.warning("requeued %d jobs of worker %s, which stopped beating", moved, owner)

    async def _give_back(self) -> None:
        """At exit: jobs this worker took but did not answer go back to the queue."""
        assert self._redis is not None
        try:
            while await self._redis.lmove(self.processing, self.tasks, "RIGHT", "RIGHT") is not None:
                log.info("gave an unfinished job back to the queue")
            await self._redis.delete(self._heartbeat_prefix + self.config.worker_id)
        except REDIS_FAILURES as exc:
            log.warning("could not give jobs back (the reaper of another worker will): %s", exc)

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            try:
                await step()
                failures = 0
                await asyncio.sleep(interval)
            except REDIS_FAILURES as exc:
                failures += 1
                log.warning("%s failed (%s)", step.__name__, exc)
                await asyncio.sleep(max(interval, backoff_delay(failures, base=0.2, cap=5.0)))


async def serve(config: WorkerConfig) -> None:
    fetcher = PageFetcher(allow_private=config.allow_private, allowed_networks=config.allowed_networks,
                          timeout=config.fetch_timeout)
    worker = ParserWorker(config, fetcher)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    await worker.run()


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        config = WorkerConfig.from_env(os.environ if environ is None else environ)
    except ConfigError as exc:
        return report("parser worker", exc)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.allow_private:
        log.warning("PARSER_ALLOW_PRIVATE=1: private and loopback addresses will be fetched")
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
