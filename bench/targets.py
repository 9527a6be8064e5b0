"""The servers under test: how each starts (pinned to the server core, open-files limit raised),
where its sockets connect, which framing it speaks, and what it cannot do at all."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from auth.tokens import ACCESS, TokenCodec
from bench.loadgen import HUB, PLAIN, SOCKETIO
from bench.services import (
    _child_setup,
    free_port,
    pinned_command,
    proc_cpu_seconds,
    proc_rss_bytes,
    process_tree,
    stop_process,
    wait_port,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    dialect: str
    ws_path: str
    module: str  # python -m <module>
    durable: bool = False  # has the publish API, stream ids and resume
    note: str = ""
    cluster: bool = False  # bench.cluster_target: hub processes on a private Redis Cluster


TARGETS = {
    "hub": Target("hub", "hub", HUB, "/ws", "hub", durable=True,
                  note="this project: `hub serve [--workers N]`, PostgreSQL + Redis"),
    "hub-cluster": Target("hub-cluster", "hub, 2 processes on a 3-master Redis Cluster", HUB, "/ws", "hub",
                          cluster=True,
                          note="this project with REDIS_CLUSTER=true: SSUBSCRIBE/SPUBLISH, both processes "
                               "on the server core (overhead, not speed-up)"),
    "forwarder": Target("forwarder", "PSUBSCRIBE forwarder (ceiling)", PLAIN, "/ws",
                        "bench.peers.forwarder_server",
                        note="one PSUBSCRIBE per process, sockets by user, no store"),
    "socketio": Target("socketio", "python-socketio", SOCKETIO, "/socket.io/?EIO=4&transport=websocket",
                       "bench.peers.socketio_server",
                       note="ASGI on uvicorn, AsyncRedisManager, a room per user"),
    "broadcaster": Target("broadcaster", "encode/broadcaster", PLAIN, "/ws",
                          "bench.peers.broadcaster_server",
                          note="Redis backend in a Starlette endpoint, a subscribe() per socket"),
    "seed004": Target("seed004", "seed 004 pattern (floor)", PLAIN, "/ws", "bench.peers.seed004_server",
                      note="one Redis connection per socket, get_message() then sleep(1)"),
}


@dataclass
class Server:
    """A running server process of one target."""

    target: Target
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> tuple[int, ...]:
        """The process and its children (`hub serve --workers N`: gunicorn's master and workers)."""
        return process_tree(self.process.pid)

    @property
    def python_pid(self) -> int:
        """The Python process (taskset execs it, so the same pid)."""
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.target.ws_path}"

    @property
    def ws_urls(self) -> list[str]:
        return [self.ws_url]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return sum(proc_rss_bytes(pid) for pid in self.pids)

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 30.0) -> float:
        """SIGTERM, then SIGKILL after `grace` seconds; returns how long the shutdown took."""
        started = time.perf_counter()
        stop_process(self.process, signal.SIGTERM, grace)  # a slow one is reported, not waited for
        return time.perf_counter() - started


def hub_environment(database_url: str, redis_url: str, secret: str, api_key: str) -> dict[str, str]:
    return {
        "HUB_ENV": "dev", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "JWT_SECRET": secret, "HUB_API_KEY": api_key, "ACCESS_TOKEN_TTL": "7200",
        "LOG_LEVEL": "WARNING", "WS_MAX_CONNECTIONS_PER_USER": "20",
        # the chat scenario measures delivery, not the per-user posting limit
        "CHAT_POST_RATE": "100000", "CHAT_POST_BURST": "100000",
    }


def migrate_hub(env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "hub", "migrate"], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"hub migrate failed: {result.stderr[-2000:]}")


async def start(target: Target, cpus: set[int], log_dir: Path, *, redis_url: str, secret: str,
                hub_env: dict[str, str] | None = None, log_name: str = "", workers: int = 1) -> Server:
    """Start `target` pinned to `cpus`; the hub with `workers` > 1 runs as `hub serve --workers`
    (gunicorn with uvicorn workers, as deployed), every process on `cpus`."""
    port = free_port()
    if target.module == "hub":
        assert hub_env is not None
        command = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(workers)]
        env = {**os.environ, **hub_env}
    else:
        command = [sys.executable, "-m", target.module, "--port", str(port), "--redis", redis_url,
                   "--secret", secret]
        env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    log_path = log_dir / f"{log_name or target.key}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(pinned_command(command, cpus), cwd=ROOT, env=env, stdout=log,  # noqa: ASYNC220
                               stderr=subprocess.STDOUT, preexec_fn=_child_setup)
    log.close()
    server = Server(target, port, process, log_path, env)
    try:
        await wait_port(port, 30, process)
    except BaseException:
        server.stop()
        raise
    return server


def token_issuer(secret: str) -> Callable[[int], str]:
    """Access tokens signed with the run's secret, as every target checks them; one per user."""
    codec = TokenCodec(secret, "HS256", 7200, 7200)

    @functools.cache
    def token(user_id: int) -> str:
        return codec.issue(user_id, ACCESS)[0]

    return token
