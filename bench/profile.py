"""Profile the hub under the bench's load with py-spy: where a delivered event and a connection
spend the server's CPU.

    .venv/bin/python -m bench.profile                      # every scenario, 8 s each
    .venv/bin/python -m bench.profile --scenario unicast --rate 10000 --seconds 10

For each scenario it writes py-spy's collapsed stacks (`<scenario>.txt`, readable by
flamegraph.pl or speedscope) and prints the functions with the most samples, by own time and
including callees.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.__main__ import log, use_uvloop
from bench.durable_path import quiet
from bench.loadgen import Injector
from bench.scenarios import Params
from bench.services import pinned_command
from bench.solo import running_hub
from bench.targets import ROOT

SCENARIOS = ("unicast", "fanout", "durable", "connect", "storm", "chat")
PROJECT = (" (hub/", " (auth/", " (chat/")
ENTRY = (" (hub/__main__", " (hub/cli", " (hub/server")


def summarize(path: Path, top: int = 22) -> str:
    """Own and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    project: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        ours = [f for f in frames if any(p in f for p in PROJECT) and not any(e in f for e in ENTRY)]
        project[" > ".join(ours[-2:]) if ours else f"(outside the hub's code) {frames[-1]}"] += count
    lines = [f"{path.name}: {total} samples"]
    lines.append("  by the innermost two frames of the hub's own code (library time below them included):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in project.most_common(top)]
    lines.append("  own time:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  including callees:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top + 10)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "send (starlette/websockets.py:95)" with the site-packages prefix cut
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    file_part = where.rsplit(":", 1)[0]
    return f"{name} ({file_part})"


async def profiled(pid: int, cpus: set[int], path: Path, seconds: float,
                   load: Callable[[], Awaitable[object]]) -> None:
    spy = str(Path(sys.executable).with_name("py-spy"))
    command = pinned_command([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250",
                              "-f", "raw", "--nonblocking", "-o", str(path)], cpus)
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE)
    await asyncio.sleep(0.5)
    await load()
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")


async def main_async(args: argparse.Namespace) -> int:
    out = Path(args.out)
    chosen = args.scenario.split(",") if args.scenario else list(SCENARIOS)
    params = Params(step_seconds=args.seconds, durable_seconds=args.seconds, fanout_reps=1,
                    ladder_users=args.users, storm_clients=args.users)
    async with running_hub(args.users + args.connect, params, out, log) as bench:
        fleet, server, users = bench.fleet, bench.server, bench.users
        spy_cpus = set(bench.results["loadgen_cpus"])
        await fleet.connect(users[:args.users], in_flight=500)
        clients = list(fleet.clients.values())
        for scenario in chosen:
            path = out / f"{scenario}.txt"
            log(f"profiling {scenario} for {args.seconds:.0f} s")
            if scenario == "unicast":
                await profiled(server.pid, spy_cpus, path, args.seconds,
                               lambda: bench._unicast_step(clients, Injector("hub"), args.rate))
            elif scenario == "fanout":
                async def fanouts() -> None:
                    until = time.monotonic() + args.seconds
                    while time.monotonic() < until:
                        await bench.fanout(args.users)
                await profiled(server.pid, spy_cpus, path, args.seconds, fanouts)
            elif scenario == "durable":
                # fresh connections: the store's ids, not the injected ones
                await fleet.disconnect()
                await fleet.connect(users[:args.users], in_flight=500)
                log(f"hub quiet after {await quiet(server.pid):.1f} s")  # presence announcements
                await profiled(server.pid, spy_cpus, path, args.seconds, lambda: bench.durable(args.batch))
            elif scenario == "connect":
                fresh = users[args.users:args.users + args.connect]

                async def churn(batch: list[int]) -> None:
                    until = time.monotonic() + args.seconds
                    while time.monotonic() < until:
                        seconds, failures = await fleet.connect(batch, in_flight=500)
                        log(f"  {len(batch)} connections in {seconds:.1f} s, {failures} failed")
                        await fleet.disconnect(batch)
                await profiled(server.pid, spy_cpus, path, args.seconds, functools.partial(churn, fresh))
            elif scenario == "storm":  # the users drop, miss 5 events each, resume at once
                await profiled(server.pid, spy_cpus, path, args.seconds, bench.storm)
            elif scenario == "chat":  # a chat of the first `chat_members` users, at 20 msg/s, then flat out
                await profiled(server.pid, spy_cpus, path, args.seconds,
                               lambda: bench.chat(fleet.tokens))
            print(summarize(path), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=10000, help="unicast events/s")
    parser.add_argument("--users", type=int, default=1000, help="connected users")
    parser.add_argument("--batch", type=int, default=100, help="users per publish call (durable)")
    parser.add_argument("--connect", type=int, default=2000, help="connections opened per round (connect)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "logs" / "profile"))
    parser.add_argument("--summarize", nargs="*", help="only summarize existing collapsed files")
    args = parser.parse_args()
    if args.summarize:
        for name in args.summarize:
            print(summarize(Path(name)))
        return 0
    use_uvloop()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
