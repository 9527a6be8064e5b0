"""The durable rows of issue 19 alone, fast: the publish API and a chat post, one hub.

    .venv/bin/python -m bench.durable_path                    # batches 1, 1000 and the chat, ~1 min
    .venv/bin/python -m bench.durable_path --batches 1,100,1000 --seconds 6 --no-chat

The same scenarios as `bench/run` (`Bench.durable`, `Bench.chat`: 1,000 connected users, 8
calls in flight, a 100-member chat at 20 msg/s then 8 posters), on one `hub serve` pinned to
the server core with PostgreSQL and a private Redis. Each row prints calls/s, events/s, call
p50/p99, delivery p99, what the checks found, and the hub's CPU per call from /proc: on a
shared machine the CPU per call moves much less than the rates do. PostgreSQL's CPU per call
is that of the backends of the hub's database (from /proc), whatever else the machine runs;
WAL bytes and syncs (fsyncs) per call are the server's (clean on a server of its own). It
prints the PostgreSQL settings it ran with; BENCH_POSTGRES_URL points it at another server
(`bench.pg_settings` compares configurations that way).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.__main__ import log, use_uvloop
from bench.report import postgres_settings
from bench.scenarios import Params
from bench.services import PG_ADMIN_URL, proc_cpu_seconds
from bench.solo import running_hub
from bench.targets import ROOT, Server

STATS_DELAY = 1.5


async def quiet(pid: int, busy: float = 0.05, limit: float = 30.0) -> float:
    """Wait until the process uses under `busy` of a core over half a second (the presence
    announcements of a thousand connects take a few seconds); returns the seconds waited."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < limit:
        before = proc_cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if proc_cpu_seconds(pid) - before < busy * 0.5:
            break
    return loop.time() - started


@dataclass(frozen=True)
class PostgresCounters:
    """What PostgreSQL spent so far: the CPU seconds of the backends serving the hub's database
    (from /proc: PostgreSQL's share of a row, whatever else the machine runs), and the server's
    WAL bytes written and WAL syncs (fsyncs; server-wide, so clean only on a server of the
    bench's own, as `bench.pg_settings` runs)."""

    cpu_s: float
    wal_bytes: int
    wal_syncs: int

    @classmethod
    async def read(cls, database_url: str) -> PostgresCounters:
        name = database_url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            pids = [row[0] for row in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", name)]
            wal = await conn.fetchrow("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, wal_sync "
                                      "FROM pg_stat_wal")
        finally:
            await conn.close()
        return cls(sum(proc_cpu_seconds(pid) for pid in pids), wal[0], wal[1])

    @classmethod
    async def after(cls, database_url: str) -> PostgresCounters:
        """Read once the backends reported their statistics (at most a second after going idle)."""
        await asyncio.sleep(STATS_DELAY)
        return await cls.read(database_url)

    def per(self, later: PostgresCounters, count: int) -> str:
        """`| CPU µs | WAL bytes | WAL syncs |` per one of `count` calls, from self to later."""
        count = max(1, count)
        return (f"| {1e6 * (later.cpu_s - self.cpu_s) / count:,.0f} "
                f"| {(later.wal_bytes - self.wal_bytes) / count:,.0f} "
                f"| {(later.wal_syncs - self.wal_syncs) / count:.2f} ")


async def main_async(args: argparse.Namespace) -> int:
    batches = tuple(int(b) for b in args.batches.split(",") if b)
    params = Params(durable_seconds=args.seconds, chat_seconds=args.seconds, ladder_users=args.users,
                    durable_batches=batches)
    lines = ["| row | calls/s | events/s | call p50 / p99 ms | delivery p99 ms | hub CPU µs/call "
             "| PostgreSQL CPU µs/call | WAL bytes/call | WAL syncs/call | hub CPU % "
             "| lost, dup, disorder, misrouted |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    async with running_hub(args.users, params, Path(args.out), log) as bench:
        await bench.fleet.connect(bench.users, in_flight=500)
        assert isinstance(bench.server, Server)  # one hub process (`running_hub`)
        database = bench.server.env["DATABASE_URL"]
        log(f"hub quiet after {await quiet(bench.server.pid):.1f} s")
        if args.warmup:
            await bench.durable(1)
        for batch in batches:
            await quiet(bench.server.pid)
            if args.checkpoint:
                await checkpoint()
            pg_before = await PostgresCounters.read(database)
            row = await bench.durable(batch)
            pg = pg_before.per(await PostgresCounters.after(database), row["calls"])
            checks = ", ".join(str(row[k]) for k in ("lost", "duplicate", "out_of_order", "misrouted"))
            elapsed = row["stored"] / row["stored_per_s"]
            lines.append(
                f"| publish, {batch} user(s)/call | {row['calls'] / elapsed:,.0f} "
                f"| {row['stored_per_s']:,.0f} | {row['call_p50_ms']:.1f} / {row['call_p99_ms']:.1f} "
                f"| {row['p99_ms']:.1f} | {1e6 * row['server_cpu_s'] / max(1, row['calls']):,.0f} "
                f"{pg}| {row['server_cpu_pct']:.0f} | {checks} |")
        if not args.no_chat:
            await quiet(bench.server.pid)
            if args.checkpoint:
                await checkpoint()
            pg_before = await PostgresCounters.read(database)
            rows = await bench.chat(bench.fleet.tokens)
            pg = pg_before.per(await PostgresCounters.after(database),
                               rows["fixed"]["messages"] + rows["closed"]["messages"])
            for mode in ("fixed", "closed"):
                row = rows[mode]
                lines.append(
                    f"| chat to {row['members']} members, {mode} | {row['messages_per_s']:,.0f} "
                    f"| {row['messages_per_s'] * row['members']:,.0f} | - | p50 {row['p50_ms']:.1f}, "
                    f"p99 {row['p99_ms']:.1f} | {1e6 * row['server_cpu_s'] / max(1, row['messages']):,.0f} "
                    f"{pg}(both) | {row['server_cpu_pct']:.0f} | incomplete {row['incomplete']}, unknown "
                    f"{row['unknown']}, duplicate {row['duplicate']} |")
    postgres = bench.results["postgresql"]
    print(f"PostgreSQL {postgres['version']}: {postgres_settings(postgres['settings'])}")
    print("\n".join(lines), flush=True)
    return 0


async def checkpoint() -> None:
    """A checkpoint before the row: the first change to each page after it is logged whole
    (full-page writes), the WAL a deployment writes after every checkpoint."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.durable_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,1000", help="users per publish call, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="per row")
    parser.add_argument("--users", type=int, default=1000, help="connected users")
    parser.add_argument("--no-chat", action="store_true")
    parser.add_argument("--warmup", action="store_true", help="an unreported batch-1 row first")
    parser.add_argument("--checkpoint", action="store_true",
                        help="a CHECKPOINT before each row (full-page writes, as after every checkpoint)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "logs"))
    args = parser.parse_args()
    use_uvloop()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
