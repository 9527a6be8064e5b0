"""A real Redis Cluster on loopback for the tests: 3 masters and 3 replicas from `redis-server`
binaries on free ports (their +10000 bus ports free too), created with `redis-cli --cluster
create`, without persistence, in a temporary directory. Only the processes started here are
stopped, by PID. `redis_cluster` is session-scoped: tests isolate themselves by channel and key
names (the run id), never by database (a cluster has only db 0). With `tls`, the nodes speak TLS
only (clients, cluster bus and replication), with certificates the test made.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 30.0
NODE_TIMEOUT_MS = 2000  # how long a silent master has before its replica takes over


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """`count` free ports whose cluster bus ports (+10000) are free as well."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 <= 65535 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


@dataclass(frozen=True)
class ClusterTls:
    """Every node serves `cert_file` (for 127.0.0.1) with `key_file`, signed by `ca_file`."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.ca_file)]

    def server_args(self, port: int) -> list[str]:
        return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(self.cert_file),
                "--tls-key-file", str(self.key_file), "--tls-ca-cert-file", str(self.ca_file),
                "--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "no"]


def cli(port: int, *args: str, timeout: float = 10.0, password: str | None = None,
        tls: ClusterTls | None = None) -> str:
    """One redis-cli command against the node on `port`; its output."""
    done = subprocess.run(["redis-cli", *(tls.cli_args() if tls else ()), "-h", "127.0.0.1", "-p", str(port),
                           *args], capture_output=True, text=True, timeout=timeout, check=True,
                          env=_cli_env(password))
    return done.stdout


def _cli_env(password: str | None) -> dict[str, str]:
    return {**os.environ, **({"REDISCLI_AUTH": password} if password else {})}


class RedisClusterNodes:
    """Six redis-server processes forming one cluster (3 masters without replicas when
    `replicas` is 0), with `password` on every node when given; `kill` SIGKILLs one of them."""

    def __init__(self, directory: Path, *, password: str | None = None, replicas: int = 1,
                 tls: ClusterTls | None = None) -> None:
        self.directory = directory
        self.password = password
        self.tls = tls
        self.replicas = replicas
        self.ports = cluster_ports(3 * (1 + replicas))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        """REDIS_URL of the cluster: two of its nodes, comma-separated (either one suffices)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return ",".join(f"rediss://{auth}127.0.0.1:{port}?ssl_ca_certs={self.tls.ca_file}"
                            for port in self.ports[:2])
        return ",".join(f"redis://{auth}127.0.0.1:{port}" for port in self.ports[:2])

    def start(self) -> None:
        for port in self.ports:
            (self.directory / str(port)).mkdir()
            self.launch(port)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            while True:
                try:
                    if self.cli(port, "PING", timeout=2).strip() == "PONG":
                        break
                except subprocess.SubprocessError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {port} did not start")
                time.sleep(0.05)
        subprocess.run(["redis-cli", *self.tls_cli_args(), "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       capture_output=True, timeout=START_TIMEOUT, check=True, env=_cli_env(self.password))
        self.wait_ok(deadline - time.monotonic())

    def cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        return cli(port, *args, timeout=timeout, password=self.password, tls=self.tls)

    def tls_cli_args(self) -> list[str]:
        return self.tls.cli_args() if self.tls else []

    def launch(self, port: int) -> None:
        """Start the node of `port`; after a kill it rejoins from its nodes.conf (as a replica
        when its replica took over meanwhile)."""
        self.processes[port] = subprocess.Popen(self.node_command(port), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)

    def node_command(self, port: int) -> list[str]:
        """The redis-server command line of the node on `port` (`extra_args` appended)."""
        node_dir = self.directory / str(port)
        listen = self.tls.server_args(port) if self.tls else ["--port", str(port)]
        return ["redis-server", *listen, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir),
                "--save", "", "--appendonly", "no", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--repl-diskless-sync-delay", "0", "--logfile", str(node_dir / "redis.log"),
                *(("--requirepass", self.password, "--masterauth", self.password) if self.password else ()),
                *self.extra_args]

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every live node reports `cluster_state:ok`, agrees on the slot map, and every
        replica is in sync with its master (a replica that never synced refuses to take over)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [port for port, process in self.processes.items() if process.poll() is None]
            try:
                replication = [self.cli(port, "INFO", "replication", timeout=2) for port in live]
                in_sync = sum("master_link_status:up" in info for info in replication)
                if (all("cluster_state:ok" in self.cli(port, "CLUSTER", "INFO", timeout=2) for port in live)
                        and in_sync == sum("role:slave" in info for info in replication)
                        and in_sync >= len(live) - 3):  # every node beyond the 3 masters is a replica
                    check = subprocess.run(["redis-cli", *self.tls_cli_args(), "--cluster", "check",
                                            f"127.0.0.1:{live[0]}"],
                                           capture_output=True, text=True, timeout=10,
                                           env=_cli_env(self.password))
                    if "[OK] All 16384 slots covered" in check.stdout and "[ERR]" not in check.stdout:
                        return
            except subprocess.SubprocessError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.2)

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Live masters by port, with the slot ranges each owns."""
        owners: dict[int, list[tuple[int, int]]] = {}
        live = next(port for port, process in self.processes.items() if process.poll() is None)
        for line in self.cli(live, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            ranges = [field.split("-") for field in fields[8:] if not field.startswith("[")]
            if ranges:  # a node still flagged master after its replica took over owns nothing
                owners[node_port] = [(int(r[0]), int(r[-1])) for r in ranges]
        return owners

    def node_id(self, port: int) -> str:
        return self.cli(port, "CLUSTER", "MYID").strip()

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (a process of ours, by PID)."""
        process = self.processes[port]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def slot_owner(masters: dict[int, list[tuple[int, int]]], slot: int) -> int:
    return next(port for port, ranges in masters.items()
                if any(low <= slot <= high for low, high in ranges))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("needs redis-server and redis-cli")
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
