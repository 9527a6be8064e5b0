"""Issue 3's first figure: events/s delivered and p50/p99 latency for 1,000 connected users.

    .venv/bin/python -m bench.realtime_first [--users 1000] [--seconds 4]

Two paths, each checked event by event (nothing lost, duplicated, out of order or misrouted):
- live delivery: events put on the users' Redis channels at rising rates; the highest rate kept
  with nothing lost and p99 <= 50 ms, and p50/p99 at each rate;
- durable, end to end: `POST /api/v1/publish` calls of 100 users each, 8 in flight: events
  stored and delivered per second, latency from the start of the call to the delivery.
Writes bench/results/realtime_first.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import orjson

from bench.__main__ import log, use_uvloop
from bench.loadgen import Injector
from bench.report import kept_rate
from bench.scenarios import Params
from bench.solo import running_hub
from bench.targets import ROOT

RATES = (1000, 2000, 5000, 10000, 15000, 20000, 30000, 40000)


async def main_async(args: argparse.Namespace) -> int:
    params = Params(step_seconds=args.seconds, durable_seconds=args.seconds, ladder_users=args.users,
                    ladder_rates=RATES)
    out = Path(args.out)
    async with running_hub(args.users, params, out / "logs", log) as bench:
        await bench.fleet.connect(bench.users, in_flight=500)
        log(f"{len(bench.fleet.clients)} users connected")
        clients = list(bench.fleet.clients.values())
        await bench._unicast_step(clients, Injector("hub"), 500)  # warm-up, not reported
        steps = []
        for rate in RATES:
            step = await bench._unicast_step(clients, Injector("hub"), rate)
            steps.append(step)
            log(f"  {rate:>6}/s offered: {step['delivered'] / step['wall_s']:.0f}/s delivered, "
                f"p50 {step['p50_ms']:.1f} p99 {step['p99_ms']:.1f} ms, lost {step['lost']}, "
                f"server CPU {step['server_cpu_pct']:.0f}%, others on its core "
                f"{step['others_on_server_core_pct']:.0f}%{'' if step['kept'] else ' (not kept)'}")
            if not step["kept"] and (step["p99_ms"] > 1000 or step["lost"]):
                break
        await bench.fleet.disconnect()
        await bench.fleet.connect(bench.users, in_flight=500)
        durable = await bench.durable(100)
    best = kept_rate(steps)
    kept = next((s for s in steps if s["rate"] == best), None)
    document = {"users": args.users, "live": steps, "durable_batch_100": durable, "kept_rate": best}
    (out / "realtime_first.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"\n| {args.users:,} connected users | events/s delivered | p50 ms | p99 ms | checked |")
    print("|---|---|---|---|---|")
    if kept is not None:
        print(f"| live (Redis channel to socket), highest rate kept | {kept['sent_per_s']:,.0f} "
              f"| {kept['p50_ms']:.1f} | {kept['p99_ms']:.1f} | none lost, duplicated or misrouted |")
    bad = sum(durable[k] for k in ("lost", "duplicate", "out_of_order", "misrouted"))
    print(f"| durable (publish API, 100 users/call, 8 in flight) | {durable['delivered_per_s']:,.0f} "
          f"| {durable['p50_ms']:.1f} | {durable['p99_ms']:.1f} | "
          f"{'none lost, duplicated or misrouted' if not bad else f'{bad} bad'} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.realtime_first", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0, help="per rate step")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    use_uvloop()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
