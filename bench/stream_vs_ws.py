"""The event stream over HTTP next to /ws (issue 16): idle memory per connection and unicast p99
at 5,000 events/s for 1,000 clients, each transport on a fresh hub of its own.

    .venv/bin/python -m bench.stream_vs_ws [--clients 1000] [--rate 5000] [--seconds 4]

The set-up of bench/run's hub (bench/solo.py): PostgreSQL, a private Redis, the hub pinned to one
core and this load generator to the other. Per transport: warm-up connections come and go (the
RSS then is the base), `--clients` users connect (one connection each: picows WebSocket clients,
or bench/stream_client.py's raw event streams), and after a second of quiet the hub's RSS minus
the base, per connection, is the idle memory. Then a 500/s warm-up step and the measured step:
events put on random users' Redis channels at `--rate`/s for `--seconds` (bench/scenarios.py
`_unicast_step`), each checked by its client (lost, duplicate or out of order, misrouted) with
its latency from injection to arrival, and the hub's CPU per event from /proc. Prints one line
per transport and the stream's ratios to /ws (the target: within 1.5x on both). Stops by itself:
every wait is bounded (about a minute in all).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from bench.__main__ import log, use_uvloop
from bench.loadgen import Injector
from bench.scenarios import Params
from bench.solo import running_hub
from bench.targets import ROOT

TRANSPORTS = ("ws", "stream")


async def measure(transport: str, args: argparse.Namespace) -> dict[str, Any]:
    params = Params(step_seconds=args.seconds, ladder_users=args.clients)
    async with running_hub(args.clients, params, Path(args.out) / "logs", log, transport) as bench:
        base = await bench.baseline()
        seconds, failures = await bench.fleet.connect(bench.users, in_flight=100)
        await asyncio.sleep(1.0)
        connected = len(bench.fleet.clients)
        rss_per_conn = (bench.server.rss() - base) / max(1, connected) / 1024
        log(f"{transport}: {connected} connected in {seconds:.1f} s "
            f"({failures} failed), {rss_per_conn:.1f} KiB each")
        clients = list(bench.fleet.clients.values())
        injector = Injector("hub")
        await bench._unicast_step(clients, injector, 500)  # warm-up, not reported
        step = await bench._unicast_step(clients, injector, args.rate)
    return {"transport": transport, "clients": connected, "failed": failures,
            "rss_per_conn_kib": rss_per_conn, **{k: step[k] for k in (
                "sent", "delivered", "lost", "late_or_duplicate", "misrouted", "closed",
                "p50_ms", "p99_ms", "max_ms", "server_us_per_event", "server_cpu_pct",
                "loadgen_cpu_pct", "others_on_server_core_pct")}}


def line(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


async def main_async(args: argparse.Namespace) -> int:
    rows = {}
    for transport in TRANSPORTS:
        rows[transport] = await measure(transport, args)
    print(f"\nunicast at {args.rate}/s for {args.clients} clients, {args.seconds:g} s:")
    for row in rows.values():
        print(f"{row['transport']:6} {line(row)}")
    ws, stream = rows["ws"], rows["stream"]
    print(f"stream/ws: idle memory {stream['rss_per_conn_kib'] / ws['rss_per_conn_kib']:.2f}x, "
          f"p99 {stream['p99_ms'] / ws['p99_ms']:.2f}x, "
          f"CPU per event {stream['server_us_per_event'] / ws['server_us_per_event']:.2f}x "
          f"(target: within 1.5x)")
    bad = sum(row[k] for row in rows.values() for k in ("lost", "late_or_duplicate", "misrouted"))
    print("every delivery checked: " + ("none lost, duplicated, out of order or misrouted"
                                        if not bad else f"{bad} bad deliveries"))
    return 0 if not bad else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_vs_ws", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=5000, help="events/s to random users")
    parser.add_argument("--seconds", type=float, default=4.0, help="of the measured step")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    use_uvloop()
    return asyncio.run(asyncio.wait_for(main_async(args), 300))


if __name__ == "__main__":
    raise SystemExit(main())
