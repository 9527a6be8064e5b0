"""Issue 19's connection rows in about a minute: new authenticated connections (rate and hub
CPU per connection), the reconnect storm and the fan-out to 10,000 sockets (time to the last
delivery and hub CPU per frame), against one hub (PostgreSQL + a private Redis) pinned to its
own core, with every delivery checked as in `bench/run`.

    .venv/bin/python -m bench.connect_bench                      # connect, storm, fan-out
    .venv/bin/python -m bench.connect_bench --only connect --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path
from typing import Any

from bench.__main__ import log, use_uvloop
from bench.scenarios import Params
from bench.services import proc_cpu_seconds
from bench.solo import running_hub
from bench.targets import ROOT

PARTS = ("connect", "fanout", "storm")


async def main_async(args: argparse.Namespace) -> int:
    chosen = args.only.split(",") if args.only else list(PARTS)
    users = max(args.fanout if "fanout" in chosen else 0, args.storm if "storm" in chosen else 0,
                args.connect)
    params = Params(fanout_reps=args.reps, storm_clients=args.storm, fanout_sizes=(args.fanout,))
    async with running_hub(users, params, Path(args.out), log) as bench:
        fleet, server = bench.fleet, bench.server
        await bench.baseline()
        if "connect" in chosen:
            batch = bench.users[:args.connect]
            rates, costs = [], []
            for _ in range(args.rounds):
                cpu = proc_cpu_seconds(server.pid)
                seconds, failures = await fleet.connect(batch, in_flight=500)
                used = proc_cpu_seconds(server.pid) - cpu
                rates.append(len(batch) / seconds)
                costs.append(1e6 * used / len(batch))
                log(f"  {len(batch)} connections in {seconds:.2f} s ({rates[-1]:.0f}/s), hub CPU "
                    f"{costs[-1]:.0f} µs per connection, {failures} failed")
                await fleet.disconnect(batch)
                await asyncio.sleep(1.0)
            print(f"connect: median {statistics.median(rates):.0f} connections/s, "
                  f"{statistics.median(costs):.0f} µs hub CPU per connection "
                  f"(rounds of {len(batch)}, 500 in flight)", flush=True)
        if "fanout" in chosen:
            await fleet.connect([u for u in bench.users[:args.fanout] if u not in fleet.clients],
                                in_flight=500)
            summary = await bench.fanout(args.fanout)
            runs: list[dict[str, Any]] = summary["runs"]
            per_frame = statistics.median(1e6 * r["server_cpu_s"] / max(1, r["delivered"]) for r in runs)
            late = sum(r["late_or_duplicate"] for r in runs)
            misrouted = sum(r["misrouted"] for r in runs)
            print(f"fanout: {summary['connected']} sockets, last delivery after "
                  f"{[round(r['last_ms'] or -1) for r in runs]} ms (median {summary['median_last_ms']:.0f}), "
                  f"hub CPU {per_frame:.1f} µs per frame, lost {summary['lost']}, duplicate/late {late}, "
                  f"misrouted {misrouted}", flush=True)
        if "storm" in chosen:
            await fleet.disconnect()  # fresh welcomes: the fan-out's injected ids are not the store's
            await fleet.connect([u for u in bench.users[:args.storm] if u not in fleet.clients],
                                in_flight=500)
            row = await bench.storm()
            bad = {k: row[k] for k in ("lost", "duplicate", "out_of_order", "misrouted")}
            print(f"storm: {row['clients']} clients, {row['missed_events']} missed events: all caught up "
                  f"after {_s(row['caught_up_s'])} (connected in {row['connect_s']:.1f} s, "
                  f"{row['reconnected']} reconnected, {row['recovered']} recovered), hub CPU "
                  f"{row['server_cpu_s']:.1f} s, {bad}", flush=True)
    return 0


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.connect_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--connect", type=int, default=2000, help="connections per connect round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storm", type=int, default=5000, help="clients resuming at once")
    parser.add_argument("--fanout", type=int, default=10000, help="sockets one event goes to")
    parser.add_argument("--reps", type=int, default=3, help="fan-out repetitions")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "logs" / "connect"))
    args = parser.parse_args()
    use_uvloop()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
