"""The parse job queue on Redis, as the parser protocol of §7 has it: jobs are LPUSHed to
`parser:tasks`, results are read from `parser:results:{id}` with one MGET per batch of ids.
On a Redis Cluster (`REDIS_CLUSTER=true`) the key names stay those of §7, so the result keys of
one batch lie in many slots: their MGET and DEL are split per slot (pipelined per node).

The client connects lazily and is closed when the app cancels its loops at shutdown (the
`parser redis connection` loop owns it). Redis errors become `QueueUnavailable` here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from redis.asyncio.cluster import RedisCluster

from hub.feature import Loop
from hub.redis_clients import REDIS_FAILURES, redis_client
from parser_bridge.parse.job_queue import Job, QueueUnavailable
from parser_bridge.parse.result import encode_job, result_key, tasks_key

log = logging.getLogger("parser_bridge.queue")
MGET_BATCH = 500
PUSH_TIMEOUT = 2.0  # a POST waits no longer for Redis; the dispatcher pushes later


class RedisJobQueue:
    def __init__(self, url: str, key_prefix: str = "", *, cluster: bool = False) -> None:
        self._prefix = key_prefix
        self._redis = redis_client(url, cluster=cluster, socket_timeout=5, socket_connect_timeout=3,
                                   health_check_interval=30)

    @property
    def tasks_key(self) -> str:
        return tasks_key(self._prefix)

    async def push(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        try:
            async with asyncio.timeout(PUSH_TIMEOUT):
                await self._redis.lpush(self.tasks_key, *(encode_job(*job) for job in jobs))
        except REDIS_FAILURES as exc:
            raise QueueUnavailable(f"cannot push to {self.tasks_key}: {exc}") from exc

    def may_hold_results(self) -> bool:
        return True  # written by other processes: only Redis knows

    async def take_results(self, request_ids: Sequence[int]) -> Mapping[int, bytes]:
        if not request_ids:
            return {}
        found: dict[int, bytes] = {}
        batches = [request_ids[i:i + MGET_BATCH] for i in range(0, len(request_ids), MGET_BATCH)]
        try:
            if isinstance(self._redis, RedisCluster):
                replies = [await self._redis.mget_nonatomic([result_key(self._prefix, i) for i in batch])
                           for batch in batches]
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for batch in batches:
                        pipe.mget([result_key(self._prefix, i) for i in batch])
                    replies = await pipe.execute()
        except REDIS_FAILURES as exc:
            raise QueueUnavailable(f"cannot read parser results: {exc}") from exc
        for batch, values in zip(batches, replies, strict=True):
            for request_id, value in zip(batch, values, strict=True):
                if value is not None:
                    found[request_id] = value
        return found

    async def discard_results(self, request_ids: Sequence[int]) -> None:
        if not request_ids:
            return
        try:
            await self._redis.delete(*(result_key(self._prefix, i) for i in request_ids))
        except REDIS_FAILURES as exc:
            log.warning("could not delete applied parser results (they expire on their own): %s", exc)

    def loops(self) -> Sequence[Loop]:
        return (Loop("parser redis connection", self._own_connection, 1.0),)

    async def _own_connection(self) -> None:
        """Wait until the app cancels its loops, then close the client's connections."""
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self._redis.aclose()
