"""`python -m bench` (or `bench/run`): the hub and its Python peers under one load generator.

    bench/run                 # the full comparison, under 17 minutes
    bench/run --quick         # a 2-3 minute smoke run
    bench/run --targets hub,forwarder --out /tmp/b
    bench/run --quick --targets hub,hub-cluster   # one Redis vs a 3-master cluster, 2 hub processes
    bench/run --targets hub --workers 2   # `hub serve --workers 2` (gunicorn) pinned to 2 cores
    BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5433/postgres bench/run ...   # another server

Writes `results.json`, `results.md` and PNG charts to `--out` (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.cluster_target import HubGroup, cluster_hubs
from bench.loadgen import Fleet, Publisher, RespPublisher
from bench.scenarios import Bench, Params
from bench.services import BenchDatabase, PrivateRedis, cores, raise_nofile
from bench.targets import ROOT, TARGETS, Server, Target, hub_environment, migrate_hub, start, token_issuer

ORDER = ("hub", "hub-cluster", "forwarder", "socketio", "broadcaster", "seed004")
PACKAGES = ("starlette", "uvicorn", "uvloop", "websockets", "redis", "hiredis", "sqlalchemy", "asyncpg",
            "orjson", "python-socketio", "python-engineio", "broadcaster", "picows", "httpx")
RUN_BUDGET, RUN_BUDGET_QUICK = 15 * 60.0, 120.0  # seconds for all targets; set-up and report take the rest
WEIGHT = {"hub": 3.0, "hub-cluster": 1.5}  # the hub runs four more scenarios; the cluster starts 3 masters
NOT_DURABLE = "n/a (no store and no publish API: events live only in Redis pub/sub)"
NO_RESUME = "n/a (no resume: events published while a client is away are lost)"
Opened = tuple[Server | HubGroup, Publisher, tuple[int, ...]]  # the server(s), publisher, Redis PIDs
INJECTED_ONLY = "not run (this target runs the injected scenarios only)"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment(redis: PrivateRedis, postgres: dict[str, Any], server_cpus: set[int], loadgen_cpus: set[int],
                params: Params, quick: bool, workers: int = 1) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # .git may be a worktree's file
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if quick else "full",
        "machine": {"cpu": model, "cores": os.cpu_count(), "memory": memory,
                    "kernel": platform.release(), "load_average_at_start": os.getloadavg()},
        "python": sys.version.split()[0], "redis_server": redis.version(),
        "postgresql": postgres["version"], "postgresql_settings": postgres["settings"],
        "packages": versions, "commit": commit, "workers": workers,
        "pinning": {"server_cpus": sorted(server_cpus), "loadgen_and_redis_cpus": sorted(loadgen_cpus)},
        "params": params.__dict__,
    }


async def guarded(results: dict[str, Any], key: str, work: Awaitable[Any], budget: float) -> Any:
    """Run one scenario within `budget` seconds; a failure is recorded, never fatal to the run."""
    try:
        async with asyncio.timeout(budget):
            value = await work
    except TimeoutError:
        results[key] = {"error": f"did not finish within {budget:.0f} s"}
        log(f"  {key}: did not finish within {budget:.0f} s")
        return None
    except Exception as exc:
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  {key}: failed: {type(exc).__name__}: {exc}")
        return None
    results[key] = value
    return value


async def run_target(bench: Bench, token: Callable[[int], str], target: Target,
                     database: BenchDatabase) -> dict[str, Any]:
    results = bench.results
    params = bench.params
    hub = target.durable
    if target.cluster:  # known before anything runs, so a cut-short run still says why
        results.update(dict.fromkeys(("durable", "api_fanout", "storm", "chat"), INJECTED_ONLY))
    elif not hub:
        results.update(durable=NOT_DURABLE, api_fanout=NOT_DURABLE, storm=NO_RESUME,
                       chat="n/a (no chat API)")
    base = await bench.baseline()
    results["baseline_rss_mb"] = base / 2**20
    idle: list[dict[str, Any]] = []
    results["idle"] = idle
    first, rest = params.idle_levels[:1], params.idle_levels[1:]
    await bench.idle(base, first, idle)
    log(" unicast ladder")
    await guarded(results, "unicast", bench.ladder(), 200)
    log(" fan-out")
    fanout: dict[str, Any] = {}
    results["fanout"] = fanout
    small = params.fanout_sizes[0]
    await guarded(fanout, str(small), bench.fanout(small), 60)
    await guarded(results, "_idle_rest", bench.idle(base, rest, idle), 150)
    if "error" in results.pop("_idle_rest", {}):
        idle.append({"wanted": rest[-1], "error": "did not reach it within 150 s"})
    for size in params.fanout_sizes[1:]:
        await guarded(fanout, str(size), bench.fanout(size), 90)
    if not hub:
        return results
    log(" durable publish API")
    await bench._settle()
    await database.align_streams({u: c.last_id for u, c in bench.fleet.clients.items()})
    await bench.fleet.connect([u for u in bench.users[:params.ladder_users] if u not in bench.fleet.clients],
                              in_flight=500)
    durable: dict[str, Any] = {}
    results["durable"] = durable
    for batch in params.durable_batches:
        await guarded(durable, str(batch), bench.durable(batch), 60)
    api_fanout: dict[str, Any] = {}
    results["api_fanout"] = api_fanout
    for size in params.fanout_sizes:
        missing = [u for u in bench.users[:size] if u not in bench.fleet.clients]
        await bench.fleet.connect(missing, in_flight=500)
        await guarded(api_fanout, str(size), bench.api_fanout(size), 90)
    log(" reconnect storm")
    await guarded(results, "storm", bench.storm(), 150)
    log(" chat")
    await guarded(results, "chat", bench.chat(token), 90)
    return results


async def main_async(args: argparse.Namespace) -> int:
    params = Params.quick() if args.quick else Params()
    wanted = args.targets.split(",") if args.targets else list(ORDER)
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        print(f"unknown targets {unknown}; choose from {', '.join(ORDER)}", file=sys.stderr)
        return 2
    if args.workers != 1 and (args.workers < 1 or wanted != ["hub"]):
        print("--workers N (N ≥ 1) is for --targets hub alone", file=sys.stderr)
        return 2
    server_cpus, loadgen_cpus = cores(args.workers)
    os.sched_setaffinity(0, loadgen_cpus)
    raise_nofile()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    secret = secrets.token_urlsafe(48)
    api_key = secrets.token_urlsafe(24)
    token = token_issuer(secret)

    redis = PrivateRedis(loadgen_cpus)
    database = BenchDatabase()
    started = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        redis.start()
        await database.create()
        env = environment(redis, await database.configuration(), server_cpus, loadgen_cpus, params,
                          args.quick, args.workers)
        log(f"bench: {env['mode']} run; server ({args.workers} worker(s)) on CPU {sorted(server_cpus)}, "
            f"load generator and redis-server on CPU {sorted(loadgen_cpus)}; {env['machine']['cpu']}")
        log(f"versions: python {env['python']}, redis-server {env['redis_server']}, PostgreSQL "
            f"{env['postgresql']}, " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()))
        log("PostgreSQL: " + report.postgres_settings(env["postgresql_settings"]))
        log(f"parameters: {params.__dict__}")
        hub_env = hub_environment(database.url, redis.url, secret, api_key)
        migrate_hub(hub_env)
        needed = max((*params.idle_levels, *params.fanout_sizes, params.storm_clients,
                      params.ladder_users, params.chat_members))
        users = await database.add_users(needed, "bench")
        log(f"{len(users)} users in database {database.name}")
        deadline = started + (RUN_BUDGET_QUICK if args.quick else RUN_BUDGET)
        for index, key in enumerate(wanted):
            target = TARGETS[key]
            weights = [WEIGHT.get(k, 1.0) for k in wanted[index:]]
            budget = (deadline - time.perf_counter()) * weights[0] / sum(weights)
            log(f"== {report.label(key, {'workers': args.workers})} ({target.note})")
            logs = out / "logs"
            logs.mkdir(exist_ok=True)
            target_started = time.perf_counter()
            opened: contextlib.AbstractAsyncContextManager[Opened]
            if target.cluster:
                opened = cluster_hubs(target, server_cpus, loadgen_cpus, logs, hub_env, secret)
            else:
                opened = one_server(target, server_cpus, logs, redis, secret, hub_env, args.workers)
            async with opened as (server, publisher, redis_pids):
                await publisher.open()
                fleet = Fleet(server.ws_urls, target.dialect, token)
                bench = Bench(server, fleet, publisher, params, redis_pids, users, log, api_key,
                              server_cpus=server_cpus)
                try:
                    await guarded(results, key, run_target(bench, token, target, database),
                                  max(budget, 20.0))
                    if isinstance(results[key], dict) and "error" in results[key]:
                        results[key] = {**bench.results, "error": results[key]["error"]}
                finally:
                    results[key]["seconds"] = time.perf_counter() - target_started
                    results[key]["workers"] = args.workers if key == "hub" else None
                    results[key]["unexpected_closes"] = len(fleet.unexpected_closes)
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(30):
                            await fleet.disconnect(limit=20)
                    await publisher.close()
                    results[key]["shutdown_s"] = server.stop()
                    results[key]["exit_code"] = server.process.returncode
                    if server.process.returncode not in (0, -15):
                        log(f"  server exit code {server.process.returncode} after "
                            f"{results[key]['shutdown_s']:.0f} s (-9: killed 30 s after SIGTERM)")
            log(f"   {key} done in {results[key]['seconds']:.0f} s")
    finally:
        with contextlib.suppress(Exception):
            await database.drop()
        redis.stop()
    document = {"environment": env, "results": results, "seconds": time.perf_counter() - started}
    (out / "results.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    table = report.markdown(document)
    (out / "results.md").write_text(table)
    charts = report.charts(document, out)
    print(table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {', '.join(str(c) for c in charts)} "
        f"in {document['seconds']:.0f} s")
    return 0


@contextlib.asynccontextmanager
async def one_server(target: Target, server_cpus: set[int], logs: Path, redis: PrivateRedis, secret: str,
                     hub_env: dict[str, str], workers: int = 1) -> AsyncIterator[Opened]:
    """One server (the hub: `workers` processes) on the run's Redis (flushed first) and a
    publisher to that Redis."""
    redis.flush()
    server = await start(target, server_cpus, logs, redis_url=redis.url, secret=secret, hub_env=hub_env,
                         workers=workers)
    try:
        yield server, RespPublisher("127.0.0.1", redis.port), redis.pids()
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 2-3 minute smoke run with small sizes")
    parser.add_argument("--targets", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output directory")
    parser.add_argument("--workers", type=int, default=1,
                        help="with --targets hub: `hub serve --workers N`, pinned to N cores (the load "
                             "generator and Redis share the last one when no core is left)")
    args = parser.parse_args()
    use_uvloop()
    return asyncio.run(main_async(args))


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    raise SystemExit(main())
