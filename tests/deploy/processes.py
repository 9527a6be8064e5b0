"""Real programs the deployment tests run as children: nginx on the project's own templates, the
hub under `hub serve`, and the certificate watcher. Each is stopped by its own PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.services import stop_process

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "nginx" / "templates"
WATCHER = REPO / "nginx" / "reload-on-cert-change.sh"
# Sourced by the official image's entrypoint before the templates are rendered.
ENTRYPOINT_ENV_SCRIPTS = sorted((REPO / "nginx" / "entrypoint.d").glob("*.envsh"))
# The filter docker-compose.yml gives the official image (NGINX_ENVSUBST_FILTER).
ENVSUBST_FILTER = "^(DOMAIN|NGINX_)"


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if pytest dies without tearing its fixtures down."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def nginx_binary() -> str:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def entrypoint_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` after the project's *.envsh scripts, sourced as the official image's entrypoint does."""
    script = "".join(f'. "{path}"\n' for path in ENTRYPOINT_ENV_SCRIPTS) + "env -0\n"
    done = subprocess.run(["sh", "-eu", "-c", script], env=dict(env), capture_output=True, check=True,
                          timeout=10)
    pairs = (item.split(b"=", 1) for item in done.stdout.split(b"\0") if b"=" in item)
    return {name.decode(): value.decode() for name, value in pairs}


def ipv6_loopback() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return True
    return False


def render_templates(output_dir: Path, env: Mapping[str, str], template_dir: Path = TEMPLATES) -> list[Path]:
    """What the official image's entrypoint does: source nginx/entrypoint.d/*.envsh, then
    (20-envsubst-on-templates.sh) envsubst every *.template with only the variables that are set
    and match the filter, keeping the relative path."""
    env = entrypoint_env(env)
    names = [name for name in env if re.search(ENVSUBST_FILTER, name)]
    shell_format = " ".join(f"${{{name}}}" for name in names)
    rendered = []
    for template in sorted(template_dir.rglob("*.template")):
        target = output_dir / template.relative_to(template_dir).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        with template.open("rb") as source, target.open("wb") as sink:
            subprocess.run(["envsubst", shell_format], stdin=source, stdout=sink, env=dict(env),
                           check=True, timeout=10)
        rendered.append(target)
    return rendered


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop one child we started, by its PID: `sig`, then SIGKILL after `timeout`."""
    stop_process(process, sig, timeout)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Nginx:
    """Debian's nginx running the rendered templates under a private prefix, as a foreground child."""

    root: Path
    env: dict[str, str]
    http_port: int
    https_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "conf" / "nginx.conf"

    @property
    def args(self) -> list[str]:
        return ["-p", f"{self.root}/", "-c", str(self.conf)]

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def render(self) -> None:
        render_templates(self.conf.parent, self.env)

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([nginx_binary(), *self.args, "-t"], capture_output=True, text=True,
                              timeout=30, check=False)

    def start(self) -> None:
        checked = self.test_config()
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        with self.access_log.open("ab") as out, self.error_log.open("ab") as err:
            self.process = subprocess.Popen([nginx_binary(), *self.args, "-g", "daemon off;"],
                                            stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                            preexec_fn=die_with_parent)
        try:
            wait_for_port(self.https_port, self.process)
            wait_for_port(self.http_port, self.process)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{tail(self.error_log)}") from exc

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, signal.SIGQUIT)  # graceful: finish open connections, bounded

    def reloads(self) -> int:
        """How many reloads (SIGHUP) the master carried out so far."""
        return self.error_log.read_text(errors="replace").count("(SIGHUP) received")


def nginx_env(root: Path, *, domain: str, upstream: str, http_port: int, https_port: int,
              **overrides: str) -> dict[str, str]:
    """The template variables for a loopback deployment under `root` (see .env.example). The
    IPv6 listeners take ::1 where the machine has it, else a Unix socket (nginx needs some address)."""
    if ipv6_loopback():
        http6, https6 = f"[::1]:{http_port}", f"[::1]:{https_port}"
    else:
        http6, https6 = f"unix:{root}/http6.sock", f"unix:{root}/https6.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "DOMAIN": domain,
        "NGINX_HUB_UPSTREAM": upstream,
        "NGINX_PUBLIC_ORIGIN": f"https://{domain}:{https_port}",
        "NGINX_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "NGINX_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "NGINX_HTTP_LISTEN_V6": http6,
        "NGINX_HTTPS_LISTEN_V6": https6,
        "NGINX_RESOLVER": "127.0.0.1",  # asked only for a name; the tests' upstreams are addresses
        "NGINX_RESOLVER_VALID": "5s",
        "NGINX_WORKER_SHUTDOWN_TIMEOUT": "30s",
        "NGINX_CERTS_DIR": str(root / "letsencrypt"),
        "NGINX_ACME_WEBROOT": str(root / "webroot"),
        "NGINX_TEMP_DIR": str(root / "temp"),
        "NGINX_PID_FILE": str(root / "nginx.pid"),
        "NGINX_WORKER_PROCESSES": "2",
        "NGINX_WORKER_CONNECTIONS": "4096",
        "NGINX_WORKER_RLIMIT_NOFILE": "8192",
        "NGINX_WS_READ_TIMEOUT": "75s",
        "NGINX_LOGIN_RATE": "60r/m",
        "NGINX_LOGIN_BURST": "5",
        "NGINX_REGISTER_RATE": "600r/m",
        "NGINX_REGISTER_BURST": "50",
        "NGINX_REFRESH_RATE": "600r/m",
        "NGINX_REFRESH_BURST": "50",
        "NGINX_TICKET_RATE": "600r/m",
        "NGINX_TICKET_BURST": "50",
        "NGINX_WS_UPGRADE_RATE": "5r/s",
        "NGINX_WS_UPGRADE_BURST": "5",
    }
    env.update(overrides)
    for directory in ("letsencrypt", "webroot", "temp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def running_nginx(nginx: Nginx) -> Iterator[Nginx]:
    nginx.render()
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


@dataclass
class HubProcess:
    """`hub serve` in a child process, configured like production but on loopback."""

    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, workers: int) -> None:
        hub = str(Path(sys.executable).with_name("hub"))
        with self.log.open("ab") as out:
            migrated = subprocess.run([hub, "migrate"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=120, check=False)
        if migrated.returncode != 0:
            raise RuntimeError(f"hub migrate failed:\n{tail(self.log)}")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [hub, "serve", "--host", self.host, "--port", str(self.port), "--workers", str(workers)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub serve exited with {self.process.returncode}:\n{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"hub serve did not become ready:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, signal.SIGTERM, timeout=40)

    @contextlib.contextmanager
    def running(self, workers: int) -> Iterator[HubProcess]:
        self.start(workers)
        try:
            yield self
        finally:
            self.stop()


def start_watcher(nginx: Nginx, interval: float, log: Path) -> subprocess.Popen[bytes]:
    """nginx/reload-on-cert-change.sh for this nginx, polling every `interval` seconds."""
    env = {**nginx.env, "CERT_WATCH_INTERVAL": str(interval), "NGINX_BIN": nginx_binary(),
           "NGINX_ARGS": " ".join(nginx.args)}
    with log.open("ab") as out:
        return subprocess.Popen(["sh", str(WATCHER)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
