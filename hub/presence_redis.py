"""Presence in Redis, shared by every process of the deployment (see hub/presence.py).

Keys, under `{prefix}{presence}:` (one hash tag: on a Redis Cluster every presence key is in one
slot, so each script's keys live on one master):
- `procs`: sorted set, process id -> the unix time its heartbeat expires (now + ttl);
- `proc:{process id}`: set of the users this process holds (a connection is open there);
- `count`: hash, user id -> how many processes hold the user (absent: offline);
- `shown`: set of the users last announced online;
- `grace`: sorted set, user id -> when they dropped to no process (pending an offline
  announcement; the process that saw it settles it, a heartbeat settles it if that process died).
A connect or a disconnect costs a few O(1) commands inside a script, and only for a user's
first or last connection on a process: nothing depends on the number of their chats or
contacts. The changes a process queued meanwhile go in one script call, in order (`APPLY`), and
so do the users whose grace ended (`SETTLE`): a reconnect storm is a few calls, not one per
user. A heartbeat is one script call; it also sweeps out processes whose heartbeat expired
(their users' counts go down; the users nobody holds any more are announced offline), which is
how a SIGKILLed process drops out within ttl + heartbeat seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from hub.presence import BATCH, PresenceStore
from hub.redis_clients import redis_client

REDIS_TIMEOUT = 2.0

# KEYS: this process's set, count, shown, grace; ARGV: now, then the changes in order as one
# string: 'a<user>' (arrive: 1 when the user is to be announced online) or 'l<user>' (leave: 1
# when no process holds the user now, who then waits out the grace), separated by spaces.
# Returns one 0/1 per change. (One argument, not two per change: the client packs one string
# instead of thousands of bulk strings.)
APPLY = """
local results = {}
for op, user in string.gmatch(ARGV[2], '([al])(%d+)') do
  local result = 0
  if op == 'a' then
    if redis.call('SADD', KEYS[1], user) == 1 then
      redis.call('HINCRBY', KEYS[2], user, 1)
    end
    redis.call('ZREM', KEYS[4], user)
    result = redis.call('SADD', KEYS[3], user)
  elseif redis.call('SREM', KEYS[1], user) == 1 then
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('ZADD', KEYS[4], ARGV[1], user)
      result = 1
    end
  end
  results[#results + 1] = result
end
return results
"""

# KEYS: count, shown, grace; ARGV: the users whose grace ended, separated by spaces. Returns
# those to announce offline.
SETTLE = """
local offline = {}
for user in string.gmatch(ARGV[1], '%d+') do
  redis.call('ZREM', KEYS[3], user)
  if redis.call('HEXISTS', KEYS[1], user) == 0 and redis.call('SREM', KEYS[2], user) == 1 then
    offline[#offline + 1] = user
  end
end
return offline
"""

# KEYS: count; ARGV: user ids separated by spaces. Returns {user, processes, user, ...} for the
# users some process holds (HMGET per 1,000 fields: one argument in, only the online out).
HOLDERS = """
local found, chunk = {}, {}
local function look()
  local counts = redis.call('HMGET', KEYS[1], unpack(chunk))
  for i = 1, #chunk do
    if counts[i] then
      found[#found + 1] = tonumber(chunk[i])
      found[#found + 1] = tonumber(counts[i])
    end
  end
  chunk = {}
end
for user in string.gmatch(ARGV[1], '%d+') do
  chunk[#chunk + 1] = user
  if #chunk == 1000 then look() end
end
if #chunk > 0 then look() end
return found
"""

# KEYS: procs, count, shown, grace; ARGV: prefix, this process, its new deadline, now,
# settle-before (grace entries older than this are overdue), whether to sweep only this process,
# whether this is the process's first heartbeat.
# Returns {offline users, 1 if this process had been swept out, online count}.
HEARTBEAT = """
local offline = {}
local function sweep(process)
  if redis.call('ZREM', KEYS[1], process) == 0 then return end
  local key = ARGV[1] .. 'proc:' .. process
  for _, user in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('ZREM', KEYS[4], user)
      if redis.call('SREM', KEYS[3], user) == 1 then table.insert(offline, user) end
    end
  end
  redis.call('DEL', key)
end
if ARGV[6] == '1' then
  sweep(ARGV[2])
  return {offline, 0, redis.call('HLEN', KEYS[2])}
end
local swept = 0
if ARGV[7] == '0' and not redis.call('ZSCORE', KEYS[1], ARGV[2]) then swept = 1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
for _, process in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, 100)) do
  sweep(process)
end
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[5], 'LIMIT', 0, 1000)) do
  redis.call('ZREM', KEYS[4], user)
  if redis.call('HEXISTS', KEYS[2], user) == 0 and redis.call('SREM', KEYS[3], user) == 1 then
    table.insert(offline, user)
  end
end
return {offline, swept, redis.call('HLEN', KEYS[2])}
"""


class RedisPresence(PresenceStore):
    """`ttl`: a process whose heartbeat is older than this is swept out (PRESENCE_TTL)."""

    def __init__(self, url: str, prefix: str, ttl: float, *, cluster: bool = False) -> None:
        self._redis = redis_client(url, cluster=cluster, socket_timeout=REDIS_TIMEOUT * 2,
                                   socket_connect_timeout=REDIS_TIMEOUT * 2,
                                   health_check_interval=30)
        self._ttl = ttl
        self._prefix = prefix + "{presence}:"
        self.process_id = uuid.uuid4().hex
        self._procs = self._prefix + "procs"
        self._mine = self._prefix + "proc:" + self.process_id
        self._count = self._prefix + "count"
        self._shown = self._prefix + "shown"
        self._grace = self._prefix + "grace"
        self._apply = self._redis.register_script(APPLY)
        self._settle = self._redis.register_script(SETTLE)
        self._heartbeat = self._redis.register_script(HEARTBEAT)
        self._holders = self._redis.register_script(HOLDERS)
        self._beaten = False

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(REDIS_TIMEOUT):
            return await script(keys=keys, args=args)

    async def apply(self, changes: Sequence[tuple[bool, int]]) -> list[bool]:
        if not changes:
            return []
        ops = " ".join(f"{'a' if arriving else 'l'}{user_id}" for arriving, user_id in changes)
        results = await self._call(self._apply, [self._mine, self._count, self._shown,
                                                 self._grace], [repr(time.time()), ops])
        return [bool(result) for result in results]

    async def settle_many(self, user_ids: Sequence[int]) -> list[int]:
        if not user_ids:
            return []
        offline = await self._call(self._settle, [self._count, self._shown, self._grace],
                                   [" ".join(map(str, user_ids))])
        return [int(user) for user in offline]

    async def holders(self, user_ids: Iterable[int]) -> dict[int, int]:
        ids = " ".join(map(str, user_ids))
        if not ids:
            return {}
        found = await self._call(self._holders, [self._count], [ids])
        return dict(zip(found[::2], found[1::2], strict=True))

    async def heartbeat(self, local_users: Iterable[int]) -> tuple[list[int], list[int], int]:
        offline, swept, count = await self._beat(sweep_self=False)
        again: list[int] = []
        if swept:  # this process had been taken for dead (a long pause): hold its users again
            users = list(local_users)
            for start in range(0, len(users), BATCH):
                chunk = users[start:start + BATCH]
                results = await self.apply([(True, user_id) for user_id in chunk])
                again += [user_id for user_id, shown in zip(chunk, results, strict=True) if shown]
            async with asyncio.timeout(REDIS_TIMEOUT):
                count = int(await self._redis.hlen(self._count))
        return offline, again, count

    async def close(self) -> list[int]:
        try:
            offline, _, _ = await self._beat(sweep_self=True)
        finally:
            await self._redis.aclose()
        return offline

    async def _beat(self, *, sweep_self: bool) -> tuple[list[int], int, int]:
        now = time.time()
        offline, swept, count = await self._call(
            self._heartbeat, [self._procs, self._count, self._shown, self._grace],
            [self._prefix, self.process_id, repr(now + self._ttl), repr(now),
             repr(now - self._ttl), "1" if sweep_self else "0", "1" if not self._beaten else "0"])
        self._beaten = True
        return [int(user) for user in offline], int(swept), int(count)
