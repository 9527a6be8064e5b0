"""The services a benchmark run owns: a private redis-server and a PostgreSQL database of its own.

Both are created for the run and removed at its end, so the machine's own Redis and databases
are never touched (the machine's PostgreSQL server is used, with a database named for the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NOFILE = 65536
# The cores this process may use as it starts, before a bench pins itself to the load
# generator's share: `cores` splits these, however often it is asked.
CPUS = tuple(sorted(os.sched_getaffinity(0)))
# What decides the cost of many small self-committing appends (WAL, commits, checkpoints) and
# how many connections the hubs may hold: recorded with every run.
PG_SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "full_page_writes", "wal_sync_method",
               "wal_buffers", "wal_compression", "wal_writer_delay", "commit_delay", "commit_siblings",
               "max_wal_size", "min_wal_size", "checkpoint_timeout", "checkpoint_completion_target",
               "max_connections", "plan_cache_mode", "work_mem", "effective_cache_size",
               "random_page_cost", "jit", "autovacuum", "huge_pages")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise this process's open-files limit (root may raise the hard limit too); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (limit, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted
        except (ValueError, OSError):
            continue
    return soft


def cores(server: int = 1) -> tuple[set[int], set[int]]:
    """(server cores, load-generator cores): the first `server` cores for the server, the rest for
    the load generator; when no core is left, the load generator shares the last one."""
    available = list(CPUS)
    taken = available[:max(1, server)]
    rest = available[len(taken):] or taken[-1:]
    return set(taken), set(rest)


def pinned_command(command: Sequence[str], cpus: set[int]) -> list[str]:
    """`command` pinned to `cpus` with taskset when it is installed (else left unpinned)."""
    taskset = shutil.which("taskset")
    if taskset is None:
        return list(command)
    return [taskset, "-c", ",".join(map(str, sorted(cpus))), *command]


def stop_process(process: subprocess.Popen[bytes] | None, sig: int, grace: float) -> None:
    """Send `sig` to a process this run started, SIGKILL it after `grace` seconds; reaped."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _child_setup() -> None:
    raise_nofile()
    os.setsid()  # own process group: stopping it never reaches the bench itself


@dataclass
class PrivateRedis:
    """A redis-server of this run on a free port, no persistence, pinned to `cpus`."""

    cpus: set[int]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    directory: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--maxclients", "30000", "--dir", self.directory,
                   "--client-output-buffer-limit", "pubsub 256mb 128mb 60",
                   "--loglevel", "warning", "--protected-mode", "yes"]
        self.process = subprocess.Popen(pinned_command(command, self.cpus), preexec_fn=_child_setup,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def version(self) -> str:
        binary = shutil.which("redis-server") or "redis-server"
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def pids(self) -> tuple[int, ...]:
        return (self.process.pid,) if self.process is not None else ()

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, 5)
        self.process = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class BenchDatabase:
    """A PostgreSQL database named for this run; `drop` removes it whatever happened."""

    name: str = ""

    @property
    def url(self) -> str:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{self.name}"

    @property
    def plain_url(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://")

    async def create(self) -> None:
        self.name = f"hub_bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()

    async def drop(self) -> None:
        if not self.name:
            return
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()
        self.name = ""

    async def configuration(self) -> dict[str, Any]:
        """The server's version and the `PG_SETTINGS` it runs with, as SHOW prints them (the
        server's: the hub's own connections set plan_cache_mode to force_custom_plan, hub/db.py)."""
        conn = await asyncpg.connect(self.plain_url)
        try:
            rows = await conn.fetch("SELECT name, current_setting(name) FROM pg_settings "
                                    "WHERE name = ANY($1::text[])", list(PG_SETTINGS))
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        found = dict(rows)
        settings = {name: found[name] for name in PG_SETTINGS if name in found}
        return {"version": str(version), "settings": settings}

    async def align_streams(self, heads: dict[int, int]) -> None:
        """Move streams' heads to the ids the bench injected over Redis (events never stored), so
        connections that saw them accept the stored events that come next."""
        conn = await asyncpg.connect(self.plain_url)
        try:
            await conn.execute(
                "UPDATE streams SET last_id = h.id, published_id = h.id FROM "
                "unnest($1::int[], $2::bigint[]) AS h(user_id, id) "
                "WHERE streams.user_id = h.user_id AND streams.last_id < h.id",
                list(heads), list(heads.values()))
        finally:
            await conn.close()

    async def add_users(self, count: int, prefix: str) -> list[int]:
        """Insert `count` users with empty streams straight into the tables (accounts without
        passwords: the bench signs their access tokens itself). Returns their ids."""
        conn = await asyncpg.connect(self.plain_url)
        try:
            ids: list[int] = [row[0] for row in await conn.fetch(
                "INSERT INTO users (username, created_at) "
                "SELECT $1 || g::text, now() FROM generate_series(1, $2) AS g RETURNING id",
                prefix, count)]
            await conn.execute(
                "INSERT INTO streams (user_id, epoch, last_id, published_id, trimmed_id, updated_at) "
                "SELECT u, md5(random()::text || u::text)::varchar(16), 0, 0, 0, now() "
                "FROM unnest($1::int[]) AS u", ids)
            return sorted(ids)
        finally:
            await conn.close()


async def wait_port(port: int, seconds: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} during start-up") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def cpus_busy_seconds(cpus: tuple[int, ...]) -> float:
    """Seconds the given CPUs spent busy (not idle or iowait), from /proc/stat."""
    total = 0
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0
    wanted = {f"cpu{n}" for n in cpus}
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:]]
            total += sum(values[:8]) - values[3] - values[4]  # minus idle and iowait
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> tuple[int, ...]:
    """`pid` and its descendants (a gunicorn master and its workers), from /proc."""
    found = [pid]
    for parent in found:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                with contextlib.suppress(OSError):
                    found += [int(child) for child in (task / "children").read_text().split()]
    return tuple(found)


def proc_rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
