"""The scenarios of issue 8, run against one server at a time with the same load generator.

Injected scenarios (idle, unicast ladder, fan-out) put events on the Redis channels every
server listens to, so they compare the delivery paths alone; the hub-only ones (durable
publish, API fan-out, reconnect storm, chat) go through the hub's own REST API and store.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.cluster_target import HubGroup
from bench.http_client import LeanHttp
from bench.loadgen import Client, Fleet, Injector, Publisher, percentile, pick, rfc3339_now
from bench.services import cpus_busy_seconds, proc_cpu_seconds
from bench.targets import Server

P99_TARGET = 0.050


@dataclass(frozen=True)
class Params:
    idle_levels: tuple[int, ...] = (1000, 5000, 10000)
    ladder_users: int = 1000
    ladder_rates: tuple[int, ...] = (500, 1000, 2000, 5000, 10000, 20000, 30000, 40000, 50000, 60000)
    step_seconds: float = 4.0
    fanout_sizes: tuple[int, ...] = (1000, 10000)
    fanout_reps: int = 3
    durable_batches: tuple[int, ...] = (1, 100, 1000)
    durable_seconds: float = 4.0
    durable_concurrency: int = 8
    storm_clients: int = 5000
    storm_missed: int = 5
    chat_members: int = 100
    chat_rate: float = 20.0
    chat_seconds: float = 4.0
    chat_concurrency: int = 8

    @classmethod
    def quick(cls) -> Params:
        return cls(idle_levels=(200, 500), ladder_users=200, ladder_rates=(500, 2000, 8000),
                   step_seconds=1.0, fanout_sizes=(200, 500), fanout_reps=2,
                   durable_seconds=1.0, storm_clients=300, storm_missed=3, chat_members=50,
                   chat_seconds=1.0)


@dataclass
class Meters:
    """CPU of the server, this load generator and Redis over a window (server and Redis: the sum
    of their processes), and how busy the server's core was with other processes (the noise of a
    shared machine)."""

    server_pids: tuple[int, ...]
    redis_pids: tuple[int, ...]
    server_cpus: tuple[int, ...] = ()
    started: float = 0.0
    marks: tuple[float, ...] = ()

    def start(self) -> None:
        self.started = time.perf_counter()
        self.marks = self._read()

    def _read(self) -> tuple[float, ...]:
        own = os.times()
        redis = sum(proc_cpu_seconds(pid) for pid in self.redis_pids)
        return (sum(proc_cpu_seconds(pid) for pid in self.server_pids), own.user + own.system, redis,
                cpus_busy_seconds(self.server_cpus))

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        now = self._read()
        server, loadgen, redis, core = (b - a for a, b in zip(self.marks, now, strict=True))
        return {"wall_s": wall, "server_cpu_s": server, "server_cpu_pct": 100 * server / wall,
                "loadgen_cpu_pct": 100 * loadgen / wall, "redis_cpu_pct": 100 * redis / wall,
                "others_on_server_core_pct": max(0.0, 100 * (core - server) / wall)}


def latency_summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": 1000 * percentile(ordered, 0.50), "p90_ms": 1000 * percentile(ordered, 0.90),
            "p99_ms": 1000 * percentile(ordered, 0.99), "max_ms": 1000 * ordered[-1]}


@dataclass
class Bench:
    """One target's run: its server, the clients, the publisher and the results so far."""

    server: Server | HubGroup
    fleet: Fleet
    publisher: Publisher
    params: Params
    redis_pids: tuple[int, ...]
    users: list[int]
    log: Callable[[str], None]
    api_key: str = ""
    server_cpus: set[int] = field(default_factory=set)
    results: dict[str, Any] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(8))

    def meters(self) -> Meters:
        return Meters(self.server.pids, self.redis_pids, tuple(sorted(self.server_cpus)))

    # --- 1. idle capacity --------------------------------------------------------------

    async def baseline(self) -> int:
        """RSS after a few warm-up connections came and went (lazy imports, first buffers)."""
        warm = self.users[:20]
        await self.fleet.connect(warm)
        await self.fleet.disconnect(warm)
        await asyncio.sleep(1.0)
        return self.server.rss()

    async def idle(self, base_rss: int, levels: tuple[int, ...],
                   rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Grow to each level of connections, appending a row to `rows` as each is reached."""
        for level in levels:
            missing = [u for u in self.users[:level] if u not in self.fleet.clients]
            seconds, failures = await self.fleet.connect(missing, in_flight=500)
            await asyncio.sleep(1.5)
            gc.collect()
            rss = self.server.rss()
            connected = len(self.fleet.clients)
            row = {"connections": connected, "wanted": level, "failures": failures,
                   "connect_per_s": len(missing) / seconds if seconds else 0.0,
                   "rss_mb": rss / 2**20,
                   "rss_per_conn_kib": (rss - base_rss) / max(1, connected) / 1024}
            self.log(f"  idle {connected}/{level}: RSS {row['rss_mb']:.1f} MiB, "
                     f"{row['rss_per_conn_kib']:.1f} KiB/conn, {row['connect_per_s']:.0f} conn/s, "
                     f"{failures} failed")
            rows.append(row)
            if failures > level // 10:
                break
        return rows

    # --- 2. unicast ladder -------------------------------------------------------------

    async def ladder(self) -> list[dict[str, Any]]:
        users = self.users[:self.params.ladder_users]
        await self.fleet.connect([u for u in users if u not in self.fleet.clients], in_flight=500)
        clients = [self.fleet.clients[u] for u in users if u in self.fleet.clients]
        injector = Injector(self.fleet.dialect)
        warm = await self._unicast_step(clients, injector, self.params.ladder_rates[0])  # not reported
        self.log(f"  warm-up at {warm['rate']}/s: p99 {warm['p99_ms']:.1f} ms, lost {warm['lost']}")
        rows: list[dict[str, Any]] = []
        failed_in_a_row = 0
        for rate in self.params.ladder_rates:
            row = await self._unicast_step(clients, injector, rate)
            if not row["kept"] and not _collapsed(row):
                # one retry: on a shared machine a single stall of the server's core spoils a step
                self.log(f"  {rate:>6}/s not kept (p99 {row['p99_ms']:.1f} ms, lost {row['lost']}); "
                         "once more")
                retry = await self._unicast_step(clients, injector, rate)
                retry["first_try"] = {k: row[k] for k in ("p50_ms", "p99_ms", "lost", "sent_per_s")}
                row = retry
            rows.append(row)
            self.log(f"  {rate:>6}/s: sent {row['sent_per_s']:.0f}/s delivered {row['delivered']}/"
                     f"{row['sent']} lost {row['lost']} dup/ooo {row['late_or_duplicate']} "
                     f"p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms, server "
                     f"{row['server_cpu_pct']:.0f}% CPU {row['server_us_per_event']:.0f} µs/ev, "
                     f"loadgen {row['loadgen_cpu_pct']:.0f}% redis {row['redis_cpu_pct']:.0f}% "
                     f"others on the server's core {row['others_on_server_core_pct']:.0f}%"
                     f"{'' if row['kept'] else '  (not kept)'}")
            if row["kept"]:
                failed_in_a_row = 0
                continue
            failed_in_a_row += 1
            if _collapsed(row) or failed_in_a_row >= 2 or not self.server.alive():
                break
        return rows

    async def _unicast_step(self, clients: list[Client], injector: Injector, rate: int) -> dict[str, Any]:
        fleet, counters = self.fleet, self.fleet.counters
        counters.reset()
        meters = self.meters()
        meters.start()
        loop = asyncio.get_running_loop()
        duration = self.params.step_seconds
        started = loop.time()
        sent = 0
        burst_cap = max(1, rate // 20)
        while True:
            elapsed = loop.time() - started
            if elapsed >= duration:
                break
            due = min(int(elapsed * rate) - sent, burst_cap)
            if due > 0:
                stamp = time.time()
                created = rfc3339_now()
                chosen = pick(self.rng, clients, due)
                self.publisher.publish([injector.message(c, stamp, created) for c in chosen])
                sent += due
            await asyncio.sleep(0.002)
        publish_seconds = loop.time() - started
        drained = await fleet.wait_delivered(sent, limit=max(3.0, duration))
        usage = meters.stop()
        if not drained:
            await self._settle()
        delivered = counters.delivered
        row: dict[str, Any] = {
            "rate": rate, "sent": sent, "sent_per_s": sent / publish_seconds,
            "delivered": delivered, "lost": outstanding(clients), "skipped": counters.skipped,
            "late_or_duplicate": counters.late_or_duplicate, "misrouted": counters.misrouted,
            **latency_summary(counters.latencies), **usage,
            "server_us_per_event": 1e6 * usage["server_cpu_s"] / max(1, delivered),
            "closed": len(fleet.unexpected_closes),
        }
        row["loadgen_limited"] = row["sent_per_s"] < 0.97 * rate
        row["kept"] = (row["lost"] == 0 and row["late_or_duplicate"] == 0 and row["misrouted"] == 0
                       and row["p99_ms"] <= 1000 * P99_TARGET and not row["loadgen_limited"])
        return row

    async def _settle(self, quiet: float = 1.5, limit: float = 15.0) -> None:
        """Let late deliveries of a step that did not drain arrive before the next one."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = self.fleet.counters.delivered
            await asyncio.sleep(quiet)
            if self.fleet.counters.delivered == before:
                return

    # --- 3. fan-out --------------------------------------------------------------------

    async def fanout(self, size: int) -> dict[str, Any]:
        """One event to each of `size` connected users at once (one injected message per user's
        channel); time from the publish to the last delivery."""
        users = [u for u in self.users[:size] if u in self.fleet.clients]
        clients = [self.fleet.clients[u] for u in users]
        injector = Injector(self.fleet.dialect)
        runs: list[dict[str, Any]] = []
        for _ in range(self.params.fanout_reps):
            self.fleet.counters.reset()
            before = outstanding(clients)
            meters = self.meters()
            meters.start()
            stamp = time.time()
            created = rfc3339_now()
            self.publisher.publish([injector.message(c, stamp, created) for c in clients])
            drained = await self.fleet.wait_delivered(len(clients), limit=15.0)
            usage = meters.stop()
            counters = self.fleet.counters
            if not drained:
                await self._settle()
            runs.append({"last_ms": 1000 * (counters.last_receive - stamp) if counters.delivered else None,
                         "delivered": counters.delivered, "lost": outstanding(clients) - before,
                         "late_or_duplicate": counters.late_or_duplicate, "misrouted": counters.misrouted,
                         **latency_summary(counters.latencies), "server_cpu_s": usage["server_cpu_s"]})
            await asyncio.sleep(0.5)
        summary = _best_of(size, len(clients), runs)
        self.log(f"  fan-out to {len(clients)}: last delivery after {summary['median_last_ms']} ms "
                 f"(median of {len(runs)}), lost {summary['lost']}")
        return summary

    # --- hub only: publish API ---------------------------------------------------------

    def http(self, concurrency: int) -> LeanHttp:
        return LeanHttp(self.server.http_url, concurrency,
                        {"authorization": f"Bearer {self.api_key}", "content-type": "application/json"})

    def _start_recording(self) -> None:
        self.fleet.counters.reset()
        self.fleet.recording = True
        for client in self.fleet.clients.values():
            client.recorded = []

    def _verify(self, expected: dict[int, list[tuple[int, int]]]) -> dict[str, int]:
        """Compare what every client recorded with what the API answered."""
        lost = duplicate = out_of_order = misrouted = 0
        for user_id, wanted in expected.items():
            client = self.fleet.clients.get(user_id)
            got = client.recorded or [] if client is not None else []
            seen: dict[int, int] = {}
            previous = 0
            for event_id, call, _ in got:
                if event_id in seen:
                    duplicate += 1
                    continue
                if event_id < previous:
                    out_of_order += 1
                previous = event_id
                seen[event_id] = call
            for event_id, call in wanted:
                if event_id not in seen:
                    lost += 1
                elif seen[event_id] != call:
                    misrouted += 1
        return {"lost": lost, "duplicate": duplicate, "out_of_order": out_of_order, "misrouted": misrouted}

    async def _post(self, http: LeanHttp, user_ids: list[int], call: int,
                    expected: dict[int, list[tuple[int, int]]]) -> float:
        started = time.time()
        body = orjson.dumps({"user_ids": user_ids, "name": "bench.durable",
                             "data": {"k": call, "t": started}})
        response = await http.post("/api/v1/publish", content=body)
        if response.status_code != 202:
            raise RuntimeError(f"publish answered {response.status_code}: {response.text[:300]}")
        for user_id, event_id in orjson.loads(response.content)["events"].items():
            expected.setdefault(int(user_id), []).append((event_id, call))
        return time.time() - started

    async def durable(self, batch: int) -> dict[str, Any]:
        """Publish-API calls of `batch` users each, `durable_concurrency` at a time."""
        users = [u for u in self.users[:self.params.ladder_users] if u in self.fleet.clients]
        batch = min(batch, len(users))
        expected: dict[int, list[tuple[int, int]]] = {}
        self._start_recording()
        calls = 0
        call_seconds: list[float] = []
        meters = self.meters()
        meters.start()
        deadline = time.monotonic() + self.params.durable_seconds
        async with self.http(self.params.durable_concurrency) as http:

            async def worker() -> None:
                nonlocal calls
                while time.monotonic() < deadline:
                    calls += 1
                    chosen = sorted(self.rng.sample(users, batch))
                    call_seconds.append(await self._post(http, chosen, calls, expected))

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(self.params.durable_concurrency)))
            elapsed = time.perf_counter() - started
        stored = sum(len(v) for v in expected.values())
        drained = await self.fleet.wait_delivered(stored, limit=20)
        usage = meters.stop()
        if not drained:
            await self._settle()
        self.fleet.recording = False
        checks = self._verify(expected)
        counters = self.fleet.counters
        row = {"batch": batch, "calls": calls, "stored": stored, "stored_per_s": stored / elapsed,
               "delivered": counters.delivered, "delivered_per_s": counters.delivered / usage["wall_s"],
               "call_p50_ms": 1000 * percentile(call_seconds, 0.5),
               "call_p99_ms": 1000 * percentile(call_seconds, 0.99),
               **latency_summary(counters.latencies), **checks, **usage,
               "server_us_per_event": 1e6 * usage["server_cpu_s"] / max(1, stored)}
        self.log(f"  batch {batch:>5}: {calls} calls, {row['stored_per_s']:.0f} stored/s, "
                 f"{row['delivered_per_s']:.0f} delivered/s, call p50 {row['call_p50_ms']:.1f} ms, "
                 f"delivery p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms, {checks}, server "
                 f"{row['server_cpu_pct']:.0f}% CPU")
        return row

    async def api_fanout(self, size: int) -> dict[str, Any]:
        """One publish-API call naming `size` connected users; time to the last delivery."""
        users = sorted(u for u in self.users[:size] if u in self.fleet.clients)
        runs: list[dict[str, Any]] = []
        async with self.http(2) as http:
            for rep in range(self.params.fanout_reps):
                expected: dict[int, list[tuple[int, int]]] = {}
                self._start_recording()
                started = time.time()
                call_seconds = await self._post(http, users, 10_000 + rep, expected)
                drained = await self.fleet.wait_delivered(len(users), limit=20)
                if not drained:
                    await self._settle()
                self.fleet.recording = False
                counters = self.fleet.counters
                last = counters.last_receive - started if counters.delivered else None
                runs.append({"last_ms": 1000 * last if last is not None else None,
                             "call_ms": 1000 * call_seconds, "delivered": counters.delivered,
                             **self._verify(expected), **latency_summary(counters.latencies)})
                await asyncio.sleep(0.5)
        summary = _best_of(size, len(users), runs)
        self.log(f"  API fan-out to {len(users)}: last delivery after {summary['median_last_ms']} ms "
                 f"(median of {len(runs)}), calls {[int(r['call_ms']) for r in runs]} ms, "
                 f"bad {sum(int(r['lost'] + r['duplicate'] + r['misrouted']) for r in runs)}")
        return summary

    # --- hub only: reconnect storm -----------------------------------------------------

    async def storm(self) -> dict[str, Any]:
        """`storm_clients` clients drop; `storm_missed` events are published to each while they
        are away; all reconnect at once resuming from their last id."""
        size = self.params.storm_clients
        users = [u for u in self.users[:size] if u in self.fleet.clients]
        await self._settle()
        resume = {u: (self.fleet.clients[u].last_id, self.fleet.clients[u].epoch) for u in users}
        await self.fleet.disconnect(users)
        await asyncio.sleep(0.5)
        expected: dict[int, list[tuple[int, int]]] = {}
        async with self.http(4) as http:
            for call in range(self.params.storm_missed):
                for start in range(0, len(users), 5000):
                    await self._post(http, users[start:start + 5000], 20_000 + call, expected)
        missed = sum(len(v) for v in expected.values())
        self.fleet.counters.reset()
        self.fleet.recording = True
        meters = self.meters()
        meters.start()
        started = time.time()
        seconds, failures = await self.fleet.connect(users, in_flight=1000, resume=resume, limit=60)
        for user_id in users:
            client = self.fleet.clients.get(user_id)
            if client is not None and client.recorded is None:
                client.recorded = []
        drained = await self.fleet.wait_delivered(missed, limit=60)
        usage = meters.stop()
        if not drained:
            await self._settle()
        self.fleet.recording = False
        counters = self.fleet.counters
        recovered = sum(1 for u in users if u in self.fleet.clients
                        and self.fleet.clients[u].welcome.result().get("recovered"))
        row = {"clients": len(users), "missed_events": missed, "reconnected": len(users) - failures,
               "recovered": recovered, "connect_s": seconds,
               "caught_up_s": counters.last_receive - started if counters.delivered else None,
               "delivered": counters.delivered, **self._verify(expected), **usage}
        self.log(f"  storm: {row}")
        return row

    # --- hub only: chat ----------------------------------------------------------------

    async def chat(self, token: Callable[[int], str]) -> dict[str, Any]:
        members = [u for u in self.users[:self.params.chat_members] if u in self.fleet.clients]
        creator = members[0]
        pending: dict[str, tuple[float, set[int]]] = {}
        latencies: list[float] = []
        problems = {"unknown": 0, "duplicate": 0}

        def on_chat(client: Client, event: dict[str, Any]) -> None:
            if event.get("name") != "chat.message":
                return
            text = event["data"]["text"]
            entry = pending.get(text)
            if entry is None:
                problems["unknown"] += 1
                return
            if client.user_id not in entry[1]:
                problems["duplicate"] += 1
                return
            entry[1].discard(client.user_id)
            if not entry[1]:
                latencies.append(time.time() - entry[0])

        self.fleet.on_other = on_chat
        headers = {"content-type": "application/json"}
        rows = {}
        async with LeanHttp(self.server.http_url, 32, headers, timeout=30) as http:
            created = await http.post("/api/v1/chats", headers={"authorization": f"Bearer {token(creator)}"},
                                      content=orjson.dumps({"title": "bench", "member_ids": members[1:]}))
            if created.status_code == 404:
                self.fleet.on_other = None
                return {"n/a": "no chat API on this hub"}
            if created.status_code != 201:
                raise RuntimeError(f"chat creation answered {created.status_code}: {created.text[:200]}")
            chat_id = orjson.loads(created.content)["id"]
            await asyncio.sleep(0.5)
            posted = 0

            async def post(sender: int) -> None:
                nonlocal posted
                posted += 1
                text = f"bench message {posted}"
                pending[text] = (time.time(), set(members))
                response = await http.post(f"/api/v1/chats/{chat_id}/messages",
                                           headers={"authorization": f"Bearer {token(sender)}"},
                                           content=orjson.dumps({"text": text}))
                if response.status_code != 201:
                    raise RuntimeError(f"chat post answered {response.status_code}: {response.text[:200]}")

            for mode in ("fixed", "closed"):
                latencies.clear()
                pending.clear()
                posted = 0
                meters = self.meters()
                meters.start()
                deadline = time.monotonic() + self.params.chat_seconds
                tasks: list[asyncio.Task[None]] = []
                if mode == "fixed":
                    interval = 1.0 / self.params.chat_rate
                    while time.monotonic() < deadline:
                        tasks.append(asyncio.create_task(post(self.rng.choice(members))))
                        await asyncio.sleep(interval)
                    await asyncio.gather(*tasks)
                else:
                    async def worker(until: float) -> None:
                        while time.monotonic() < until:
                            await post(self.rng.choice(members))
                    await asyncio.gather(*(worker(deadline) for _ in range(self.params.chat_concurrency)))
                elapsed = meters.stop()["wall_s"]
                for _ in range(100):
                    if len(latencies) >= posted:
                        break
                    await asyncio.sleep(0.1)
                usage = meters.stop()
                incomplete = sum(1 for _, left in pending.values() if left)
                rows[mode] = {"members": len(members), "messages": posted, "messages_per_s": posted / elapsed,
                              "incomplete": incomplete, **problems, **latency_summary(latencies), **usage}
                self.log(f"  chat {mode}: {posted / elapsed:.0f} msg/s to {len(members)} members, "
                         f"POST to last member p50 {rows[mode]['p50_ms']:.1f} "
                         f"p99 {rows[mode]['p99_ms']:.1f} ms, "
                         f"incomplete {incomplete}")
        self.fleet.on_other = None
        return rows


def _collapsed(row: dict[str, Any]) -> bool:
    return bool(row["lost"] > 0.01 * row["sent"] or row["p99_ms"] > 1000)


def outstanding(clients: list[Client]) -> int:
    """Injected events not delivered (yet) to these clients, whatever window they were sent in."""
    return sum(max(0, c.sent_seq - (c.next_seq - 1)) for c in clients)


def _best_of(size: int, connected: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median run by time to the last delivery (every run kept in `runs`)."""
    timed = sorted((r for r in runs if r.get("last_ms") is not None), key=lambda r: r["last_ms"])
    median = timed[len(timed) // 2] if timed else {}
    return {"size": size, "connected": connected, "median_last_ms": median.get("last_ms"),
            "lost": sum(r.get("lost", 0) for r in runs), "runs": runs}
