"""The bench's own services: core split, process trees (a hub with workers), the PostgreSQL
configuration a run records, and a private PostgreSQL server started and stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest

from bench import report, services
from bench.pg_settings import PrivatePostgres
from bench.services import BenchDatabase, cores, process_tree


@pytest.mark.parametrize(("available", "server", "expected"), [
    ({0, 1, 2, 3}, 1, ({0}, {1, 2, 3})),
    ({0, 1, 2, 3}, 2, ({0, 1}, {2, 3})),
    ({0, 1}, 2, ({0, 1}, {1})),  # no core left: the load generator shares the last one
    ({0, 1}, 4, ({0, 1}, {1})),
    ({3}, 1, ({3}, {3})),
])
def test_cores_split_server_and_load_generator(monkeypatch: pytest.MonkeyPatch, available: set[int],
                                               server: int, expected: tuple[set[int], set[int]]) -> None:
    monkeypatch.setattr(services, "CPUS", tuple(sorted(available)))
    assert cores(server) == expected


def test_cores_split_the_same_after_the_bench_pins_itself() -> None:
    """A bench pins itself to the load generator's cores, then starts servers: they still get
    the server's cores (not the load generator's, as when the split read this process's
    affinity again)."""
    before = os.sched_getaffinity(0)
    server, loadgen = cores()
    try:
        os.sched_setaffinity(0, loadgen)
        assert cores() == (server, loadgen)
    finally:
        os.sched_setaffinity(0, before)


def test_process_tree_holds_children_and_grandchildren() -> None:
    def spawning(*children: str) -> str:
        spawns = "".join(f"subprocess.Popen([sys.executable, '-c', {code!r}]); " for code in children)
        return f"import subprocess, sys, time; {spawns}time.sleep(60)"

    outer = subprocess.Popen([sys.executable, "-c", spawning(spawning(spawning()), spawning())],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(process_tree(outer.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = process_tree(outer.pid)
        assert tree[0] == outer.pid
        assert len(tree) == 4  # two children, one grandchild
    finally:
        os.killpg(outer.pid, signal.SIGKILL)
        outer.wait(5)


def test_workers_label_the_hub_only() -> None:
    assert report.label("hub", {"workers": 2}) == "hub, 2 workers (gunicorn)"
    assert report.label("hub", {"workers": 1}) == "hub"
    assert report.label("forwarder", {"workers": None}) == "PSUBSCRIBE forwarder (ceiling)"


async def test_the_run_records_its_postgresql_configuration() -> None:
    database = BenchDatabase()
    await database.create()
    try:
        configuration = await database.configuration()
    finally:
        await database.drop()
    assert configuration["version"]
    settings = configuration["settings"]
    assert list(settings) == [name for name in services.PG_SETTINGS if name in settings]
    assert {"shared_buffers", "synchronous_commit", "fsync", "max_connections"} <= set(settings)


async def test_private_postgres_runs_with_the_given_settings_and_stops_by_pid() -> None:
    server = PrivatePostgres()
    try:
        server.init()
        await server.start({"shared_buffers": "32MB", "wal_compression": "lz4"})
        assert server.process is not None
        pid = server.process.pid
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SHOW shared_buffers") == "32MB"
            assert await conn.fetchval("SHOW wal_compression") == "lz4"
            assert await conn.fetchval("SELECT pg_postmaster_start_time() IS NOT NULL")
        finally:
            await conn.close()
        server.stop()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        server.remove()
    assert server.directory == ""
