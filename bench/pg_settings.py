"""What PostgreSQL settings buy the hub's durable path: a private PostgreSQL server run with its
defaults and with the settings docker-compose.yml sets, and the durable rows (`bench.durable_path`:
publish API with 1 and 1,000 users per call, a chat post to 100 members) against each, the
configurations alternated (A B A B) so that the noise of a shared machine shows.

    .venv/bin/python -m bench.pg_settings                       # 2 rounds of both, ~6 min
    .venv/bin/python -m bench.pg_settings --rounds 3 --configs defaults,compose,no-sync-commit

The server is Debian's binaries (`/usr/lib/postgresql/<newest>/bin`, or BENCH_PG_BIN) on a data
directory in /tmp (the same disk as the machine's PostgreSQL), on a free port, as the `postgres`
user when run as root; it is stopped by PID and removed at the end. The machine's own server is
never touched. `no-sync-commit` (synchronous_commit=off) is measured for reference only: a crash
loses the last commits, events the API already acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.services import free_port, stop_process

# docker-compose.yml's `postgres -c ...` (README "PostgreSQL settings" says what each buys)
COMPOSE = {"shared_buffers": "256MB", "wal_buffers": "16MB", "wal_compression": "lz4",
           "max_wal_size": "4GB", "min_wal_size": "1GB", "checkpoint_timeout": "15min",
           "max_connections": "200"}
CONFIGS = {
    "defaults": {},
    "compose": COMPOSE,
    "commit-delay": {**COMPOSE, "commit_delay": "200", "commit_siblings": "2"},
    "no-sync-commit": {**COMPOSE, "synchronous_commit": "off"},  # loses acknowledged events on a crash
}


def binaries() -> Path:
    configured = os.environ.get("BENCH_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda path: int(path.parent.parent.name))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql (set BENCH_PG_BIN)")
    return found[-1].parent


def _as_owner() -> None:
    """In the child: become `postgres` when root (initdb and postgres refuse root)."""
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.setgid(owner.pw_gid)
        os.setuid(owner.pw_uid)
    os.setsid()


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this run: initialised in a temporary directory, started with the
    given settings, stopped by PID; `remove` deletes it."""

    directory: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    bin: Path = field(default_factory=binaries)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="bench-pg-")
        if os.getuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        subprocess.run([self.bin / "initdb", "-D", f"{self.directory}/data", "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], preexec_fn=_as_owner, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.port = free_port()

    def launch(self, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        options = [arg for name, value in {"listen_addresses": "127.0.0.1",
                                           "unix_socket_directories": self.directory,
                                           **settings}.items() for arg in ("-c", f"{name}={value}")]
        with Path(self.directory, "postgres.log").open("ab") as log:
            self.process = subprocess.Popen([self.bin / "postgres", "-D", f"{self.directory}/data",
                                             "-p", str(self.port), *options],
                                            preexec_fn=_as_owner, stdout=log, stderr=subprocess.STDOUT)
        return self.process

    def log_tail(self) -> str:
        return Path(self.directory, "postgres.log").read_text(errors="replace")[-2000:]

    async def start(self, settings: dict[str, str]) -> None:
        """Start the server with `settings` (`-c name=value`) and wait until it accepts connections."""
        process = self.launch(settings)
        for _ in range(300):
            with contextlib.suppress(OSError, asyncpg.CannotConnectNowError):
                conn = await asyncpg.connect(self.url, timeout=2)
                await conn.close()
                return
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited with {process.returncode}: {self.log_tail()}")
            await asyncio.sleep(0.1)
        raise RuntimeError("postgres did not accept connections within 30 s")

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions end, a checkpoint is written), SIGKILL after 60 s."""
        stop_process(self.process, signal.SIGINT, 60)
        self.process = None

    def remove(self) -> None:
        self.stop()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""


def durable_rows(url: str, extra: list[str]) -> list[str]:
    """One `bench.durable_path` run against the server at `url`: its table and settings line."""
    result = subprocess.run([sys.executable, "-m", "bench.durable_path", *extra],
                            env={**os.environ, "BENCH_POSTGRES_URL": url}, capture_output=True, text=True,
                            check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"bench.durable_path failed: {result.stderr[-2000:]}")
    return [line for line in result.stdout.splitlines() if line.startswith(("PostgreSQL", "|"))]


async def main_async(args: argparse.Namespace) -> int:
    names = args.configs.split(",")
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        print(f"unknown configurations {unknown}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    server = PrivatePostgres()
    table: list[str] = []
    try:
        server.init()
        for round_ in range(1, args.rounds + 1):
            for name in names:
                await server.start(CONFIGS[name])
                print(f"[{name}, round {round_}] on {server.url}", flush=True)
                for line in await asyncio.to_thread(durable_rows, server.url, args.extra):
                    print(f"  {line}", flush=True)
                    if line.startswith("| row"):
                        if not table:  # durable_path's header, one column more
                            table = ["| configuration, round " + line, "|---" * line.count("|") + "|"]
                    elif line.startswith("| "):
                        table.append(f"| {name}, {round_} {line}")
                server.stop()
    finally:
        server.remove()
    print("\n".join(table), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.pg_settings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="defaults,compose",
                        help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="after --: options for bench.durable_path")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
