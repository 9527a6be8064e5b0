"""What presence costs (issue 15, "Cost and scale"): the same hub with PRESENCE=0 and with
PRESENCE=1, back to back, on the bench's idle-capacity and reconnect-storm scenarios.

    .venv/bin/python -m bench.presence_cost                    # 10,000 idle, a storm of 5,000
    .venv/bin/python -m bench.presence_cost --idle 2000 --storm 1000    # a quick look

Every user is a member of two chats of `--chat-size` members (one of neighbours, all in the
storm or all outside it, and one spread over the whole population, half of whose members stay
connected during the storm), so presence has announcements to make: offline when the storm's
users drop, online when they come back. For each setting, on a fresh database and Redis:
1. `--idle` users connect and stay idle: the hub's RSS per connection (RSS minus the RSS after a
   warm-up, divided by the connections), once presence has gone quiet;
2. the first `--storm` of them drop, miss 5 events each and reconnect at once resuming
   (bench.scenarios Bench.storm): the time until all have caught up, the hub's CPU from the drop
   until presence has gone quiet, and the private Redis's commands in that window (INFO
   commandstats) per user (one disconnect + one connect each).
It prints both settings side by side and the ratios. Server pinned to CPU 0, this process and
redis-server to the rest, as in bench/run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.__main__ import log, use_uvloop
from bench.loadgen import Fleet, RespPublisher
from bench.scenarios import Bench, Params
from bench.services import BenchDatabase, PrivateRedis, cores, raise_nofile
from bench.targets import ROOT, TARGETS, hub_environment, migrate_hub, start, token_issuer

PRESENCE_COMMANDS = ("evalsha", "eval", "hmget", "hlen")


async def commandstats(port: int) -> dict[str, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"INFO commandstats\r\n")
        header = await reader.readline()  # $<length>
        body = await reader.readexactly(int(header[1:]) + 2)
    finally:
        writer.close()
    calls: dict[str, int] = {}
    for line in body.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.removeprefix("cmdstat_").partition(":")
            calls[name] = int(fields.split(",")[0].removeprefix("calls="))
    return calls


async def quiet(port: int, still: float = 1.5, limit: float = 60.0) -> float:
    """Wait until presence's commands and PUBLISH stop (one heartbeat allowed); seconds waited."""
    started = time.perf_counter()
    watched = (*PRESENCE_COMMANDS, "publish")
    last = await commandstats(port)
    calm_since = time.perf_counter()
    while time.perf_counter() - started < limit:
        await asyncio.sleep(0.25)
        now = await commandstats(port)
        if sum(now.get(c, 0) - last.get(c, 0) for c in watched) > 1:
            calm_since = time.perf_counter()
        last = now
        if time.perf_counter() - calm_since >= still:
            break
    return time.perf_counter() - started - still


async def add_chats(database: BenchDatabase, users: list[int], size: int) -> int:
    """Two chats per user: neighbours (users[i*size:(i+1)*size]) and a spread group (every
    len(users)/size-th user). Returns the number of chats."""
    groups = [users[i:i + size] for i in range(0, len(users), size)]
    stride = max(1, len(users) // size)
    groups += [users[j::stride] for j in range(stride)]
    conn = await asyncpg.connect(database.plain_url)
    try:
        ids = [row[0] for row in await conn.fetch(
            "INSERT INTO chats (title, created_by, created_at, last_activity_at, message_count) "
            "SELECT 'bench ' || g::text, NULL, now(), now(), 0 FROM generate_series(1, $1) AS g "
            "RETURNING id", len(groups))]
        chat_ids = [chat for chat, group in zip(ids, groups, strict=True) for _ in group]
        members = [user for group in groups for user in group]
        await conn.execute(
            "INSERT INTO chat_members (chat_id, user_id, joined_at, last_read_message_id, "
            "last_read_seq) SELECT c, u, now(), 0, 0 FROM unnest($1::int[], $2::int[]) AS m(c, u) "
            "ON CONFLICT DO NOTHING", chat_ids, members)
    finally:
        await conn.close()
    return len(groups)


async def one_setting(presence: bool, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    server_cpus, loadgen_cpus = cores()
    secret, api_key = secrets.token_urlsafe(48), secrets.token_urlsafe(24)
    token = token_issuer(secret)
    redis = PrivateRedis(loadgen_cpus)
    database = BenchDatabase()
    row: dict[str, Any] = {"presence": presence}
    try:
        redis.start()
        await database.create()
        env = {**hub_environment(database.url, redis.url, secret, api_key),
               "PRESENCE": "1" if presence else "0"}
        migrate_hub(env)
        users = await database.add_users(max(args.idle, args.storm) + 20, "pc")
        row["chats"] = await add_chats(database, users[20:], args.chat_size) if args.chat_size else 0
        server = await start(TARGETS["hub"], server_cpus, out, redis_url=redis.url, secret=secret,
                             hub_env=env)
        publisher = RespPublisher("127.0.0.1", redis.port)
        await publisher.open()
        fleet = Fleet(server.ws_url, "hub", token)
        params = Params(storm_clients=args.storm)
        bench = Bench(server, fleet, publisher, params, redis.pids(), users[20:], log, api_key,
                      server_cpus=server_cpus)
        try:
            await fleet.connect(users[:20])  # warm-up users, in no chat
            await fleet.disconnect(users[:20])
            await asyncio.sleep(1.0)
            base_rss = server.rss()
            connected = users[20:20 + args.idle]
            cpu = server.cpu()
            seconds, failures = await fleet.connect(connected, in_flight=500)
            row["connect_per_s"] = len(connected) / seconds
            row["connect_failures"] = failures
            await quiet(redis.port)
            row["connect_cpu_us"] = (server.cpu() - cpu) / len(connected) * 1e6
            await asyncio.sleep(1.0)
            row["idle_connections"] = len(fleet.clients)
            row["idle_kib_per_conn"] = (server.rss() - base_rss) / max(1, len(fleet.clients)) / 1024
            row["signals_while_connecting"] = fleet.counters.signals
            log(f"  PRESENCE={int(presence)}: {len(fleet.clients)} idle, "
                f"{row['idle_kib_per_conn']:.2f} KiB/conn, {row['connect_per_s']:.0f} conn/s")
            if not args.storm:
                return row
            before_calls, before_cpu = await commandstats(redis.port), server.cpu()
            if args.profile and presence:  # py-spy on the hub through the storm (bench.profile)
                from bench.profile import profiled, summarize

                path = out / "presence_storm.txt"
                results: list[dict[str, Any]] = []

                async def storm_once() -> None:
                    results.append(await bench.storm())
                await profiled(server.pid, loadgen_cpus, path, args.profile, storm_once)
                storm = results[0]
                print(summarize(path), flush=True)
            else:
                storm = await bench.storm()
            row["presence_quiet_after_s"] = await quiet(redis.port)
            after_calls, after_cpu = await commandstats(redis.port), server.cpu()
            row["storm"] = storm
            row["storm_cpu_s"] = after_cpu - before_cpu
            row["calls"] = {name: after_calls.get(name, 0) - before_calls.get(name, 0)
                            for name in after_calls if after_calls.get(name, 0) != before_calls.get(name, 0)}
            row["storm_signals"] = fleet.counters.signals
        finally:
            await fleet.disconnect()
            await publisher.close()
            server.stop()
    finally:
        await database.drop()
        redis.stop()
    return row


def report(rows: dict[bool, dict[str, Any]], args: argparse.Namespace) -> str:
    off, on = rows[False], rows[True]

    def ratio(key: str, sub: str | None = None) -> str:
        a = off[key][sub] if sub else off[key]
        b = on[key][sub] if sub else on[key]
        return f"{b / a:.2f}x" if a else "-"

    lines = [f"presence cost: idle {args.idle}, storm {args.storm} (5 missed events each), "
             f"two chats of {args.chat_size} per user ({on['chats']} chats); "
             f"load average {os.getloadavg()[0]:.2f}",
             f"{'':44}{'PRESENCE=0':>14}{'PRESENCE=1':>14}{'on/off':>9}"]

    def line(label: str, a: float, b: float, fmt: str, r: str) -> None:
        lines.append(f"{label:44}{format(a, fmt):>14}{format(b, fmt):>14}{r:>9}")

    line(f"idle KiB per connection at {off['idle_connections']}", off["idle_kib_per_conn"],
         on["idle_kib_per_conn"], ".2f", ratio("idle_kib_per_conn"))
    line("connects/s while filling", off["connect_per_s"], on["connect_per_s"], ",.0f",
         ratio("connect_per_s"))
    line("hub CPU per connect while filling (us)", off["connect_cpu_us"], on["connect_cpu_us"],
         ",.0f", ratio("connect_cpu_us"))
    if "storm" not in on:
        return "\n".join(lines)
    so, sn = off["storm"], on["storm"]
    line("storm: all caught up (s)", so["caught_up_s"] or 0, sn["caught_up_s"] or 0, ".2f",
         ratio("storm", "caught_up_s"))
    line("storm: all reconnected (s)", so["connect_s"], sn["connect_s"], ".2f",
         ratio("storm", "connect_s"))
    line("storm: hub CPU, drop to quiet (s)", off["storm_cpu_s"], on["storm_cpu_s"], ".2f",
         ratio("storm_cpu_s"))
    line("storm: hub CPU per user (us)", off["storm_cpu_s"] / so["clients"] * 1e6,
         on["storm_cpu_s"] / sn["clients"] * 1e6, ",.0f", "")
    line("storm: presence quiet after catch-up (s)", off["presence_quiet_after_s"],
         on["presence_quiet_after_s"], ".2f", "")
    line("storm: presence frames received", off["storm_signals"], on["storm_signals"], ",", "")
    bad = {k: (so[k], sn[k]) for k in ("lost", "duplicate", "out_of_order", "misrouted")
           if k in so and (so[k] or sn[k])}
    lines.append(f"storm: events delivered {so['delivered']:,} / {sn['delivered']:,}, "
                 f"recovered {so['recovered']:,} / {sn['recovered']:,}, problems {bad or 'none'}")
    users = max(1, so["clients"])
    lines.append(f"Redis commands per storm user (one disconnect + one connect), "
                 f"{users:,} users:")
    names = sorted(set(off["calls"]) | set(on["calls"]),
                   key=lambda n: -(on["calls"].get(n, 0) + off["calls"].get(n, 0)))
    for name in names:
        a, b = off["calls"].get(name, 0) / users, on["calls"].get(name, 0) / users
        lines.append(f"  {name:42}{a:14.2f}{b:14.2f}{b - a:+9.2f}")
    extra = sum(on["calls"].get(n, 0) - off["calls"].get(n, 0) for n in PRESENCE_COMMANDS) / users
    lines.append(f"presence bookkeeping per user (evalsha, hmget, ...): {extra:.2f} commands; "
                 "PUBLISH on top: one per online co-member per announced change")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    _, loadgen_cpus = cores()
    os.sched_setaffinity(0, loadgen_cpus)
    raise_nofile()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    storms: list[tuple[float, float]] = []  # per pair: (caught up on/off, storm CPU on/off)
    for pair in range(1, args.pairs + 1):
        rows: dict[bool, dict[str, Any]] = {}
        for presence in (False, True):
            log(f"pair {pair}/{args.pairs}: PRESENCE={int(presence)}")
            rows[presence] = await one_setting(presence, args, out)
        print(report(rows, args), flush=True)
        off, on = rows[False].get("storm"), rows[True].get("storm")
        if off and on and off["caught_up_s"] and on["caught_up_s"]:
            storms.append((on["caught_up_s"] / off["caught_up_s"],
                           rows[True]["storm_cpu_s"] / rows[False]["storm_cpu_s"]))
    if len(storms) > 1:
        print(f"storm on/off over {len(storms)} pairs: all caught up "
              f"{' '.join(f'{t:.2f}x' for t, _ in storms)} (median "
              f"{statistics.median(t for t, _ in storms):.2f}x); hub CPU "
              f"{' '.join(f'{c:.2f}x' for _, c in storms)} (median "
              f"{statistics.median(c for _, c in storms):.2f}x)", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.presence_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections")
    parser.add_argument("--storm", type=int, default=5_000,
                        help="of them, reconnecting at once (0: no storm)")
    parser.add_argument("--chat-size", type=int, default=10, help="members per chat (0: no chats)")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="record the hub with py-spy for this long from the start of the "
                             "storm with PRESENCE=1 and print where its time went")
    parser.add_argument("--pairs", type=int, default=1,
                        help="run PRESENCE=0 then 1 this many times (this machine's noise: "
                             "±0.5 s between storms of one setting) and print the medians")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "logs"))
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per pair")
    args = parser.parse_args()
    if args.storm > args.idle:
        parser.error("--storm is a subset of --idle")
    use_uvloop()

    async def bounded() -> int:
        return await asyncio.wait_for(main_async(args), args.deadline * args.pairs)

    return asyncio.run(bounded())


if __name__ == "__main__":
    raise SystemExit(main())
