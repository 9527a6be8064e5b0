"""The ACME side of the deployment tests: pebble (Let's Encrypt's test CA) and its DNS server
pebble-challtestsrv as children on loopback, certbot/certificates.sh run as the certbot container
runs it, and the project's nginx on pebble's HTTP-01 port starting on the placeholder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509

from tests.deploy.conftest import DOMAIN, client_tls
from tests.deploy.processes import (
    REPO,
    Nginx,
    die_with_parent,
    free_port,
    nginx_env,
    running_nginx,
    start_watcher,
    stop,
    tail,
    wait_for_port,
)
from tests.deploy.tls_ca import ThrowawayCA

CERTIFICATES = REPO / "certbot" / "certificates.sh"
SERVED_CERTIFICATE = REPO / "certbot" / "served_certificate.py"


@dataclass
class ChallengeDns:
    """pebble-challtestsrv's DNS: every name is 127.0.0.1 unless a record says otherwise."""

    port: int
    management_url: str

    def point(self, name: str, address: str) -> None:
        """Give `name` an A record (e.g. where the server is not: the challenge fails)."""
        answer = httpx.post(f"{self.management_url}/add-a", json={"host": f"{name}.", "addresses": [address]},
                            timeout=10)
        answer.raise_for_status()

    def clear(self, name: str) -> None:
        httpx.post(f"{self.management_url}/clear-a", json={"host": f"{name}."}, timeout=10).raise_for_status()


@dataclass
class Pebble:
    directory_url: str
    management_url: str

    def root_pem(self, test_ca: ThrowawayCA) -> str:
        """The root this pebble signs with (a new random one each start)."""
        answer = httpx.get(f"{self.management_url}/roots/0", verify=client_tls(test_ca.ca_file), timeout=10)
        answer.raise_for_status()
        return answer.text


@contextlib.contextmanager
def running_challenge_dns(root: Path) -> Iterator[ChallengeDns]:
    root.mkdir(parents=True, exist_ok=True)
    dns_port, management_port = free_port(), free_port()
    with (root / "challtestsrv.log").open("ab") as out:
        dns = subprocess.Popen(
            ["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{management_port}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    try:
        wait_for_port(management_port, dns)
        yield ChallengeDns(dns_port, f"http://127.0.0.1:{management_port}")
    finally:
        stop(dns)


@contextlib.contextmanager
def running_pebble(root: Path, test_ca: ThrowawayCA, http_port: int, dns: ChallengeDns) -> Iterator[Pebble]:
    """pebble validating HTTP-01 on `http_port` (where nginx listens), resolving through `dns`."""
    root.mkdir(parents=True, exist_ok=True)
    acme_port, management_port = free_port(), free_port()
    test_ca.issue(["localhost", "127.0.0.1"], root / "cert.pem", root / "key.pem")
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(root / "cert.pem"),
        "privateKey": str(root / "key.pem"),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}
    (root / "pebble.json").write_text(json.dumps(config))
    # No PEBBLE_VA_ALWAYS_VALID: every challenge is really fetched from nginx.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEBBLE_VA_NOSLEEP": "1",
           "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    with (root / "pebble.log").open("ab") as out:
        ca = subprocess.Popen(["pebble", "-config", str(root / "pebble.json"), "-dnsserver",
                               f"127.0.0.1:{dns.port}"],
                              env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              preexec_fn=die_with_parent)
    try:
        wait_for_port(acme_port, ca)
        wait_for_port(management_port, ca)
        yield Pebble(f"https://127.0.0.1:{acme_port}/dir", f"https://127.0.0.1:{management_port}")
    finally:
        stop(ca)


def certificates_env(nginx: Nginx, test_ca: ThrowawayCA, pebble: Pebble, **overrides: str) -> dict[str, str]:
    """The certbot container's environment, pointed at `pebble` and at `nginx`'s directories."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DOMAIN": DOMAIN,
        "CERTBOT_EMAIL": "",
        "CERTBOT_SERVER": pebble.directory_url,
        "CERTBOT_CONFIG_DIR": str(nginx.root / "letsencrypt"),
        "CERTBOT_WORK_DIR": str(nginx.root / "certbot-work"),
        "CERTBOT_LOGS_DIR": str(nginx.root / "certbot-logs"),
        "CERTBOT_WEBROOT": str(nginx.root / "webroot"),
        "CERTBOT_PUBLIC_DIR": str(nginx.root / "tls-public"),
        "REQUESTS_CA_BUNDLE": str(test_ca.ca_file),  # pebble's ACME endpoint's own certificate
        "PYTHON": sys.executable,  # the certbot image's python3, with cryptography
        **overrides,
    }


def certificates(command: list[str], nginx: Nginx, test_ca: ThrowawayCA, pebble: Pebble, *,
                 check: bool = True) -> str:
    """Run certbot/certificates.sh as the certbot container does, against pebble; its output."""
    done = subprocess.run(["sh", str(CERTIFICATES), *command], env=certificates_env(nginx, test_ca, pebble),
                          capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}\n{tail(nginx.error_log)}"
    else:
        assert done.returncode != 0, f"{command} succeeded: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


async def served_certificate(nginx: Nginx) -> x509.Certificate:
    """The leaf nginx presents for DOMAIN (read without verifying it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(10):
        _reader, writer = await asyncio.open_connection("127.0.0.1", nginx.https_port, ssl=context,
                                                        server_hostname=DOMAIN)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        async with asyncio.timeout(5):
            await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


async def wait_for_new_certificate(nginx: Nginx, old: x509.Certificate,
                                   seconds: float = 20) -> x509.Certificate:
    async with asyncio.timeout(seconds):
        while True:
            current = await served_certificate(nginx)
            if current.serial_number != old.serial_number:
                return current
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def running_acme_nginx(root: Path, upstream: str, http_port: int) -> Iterator[Nginx]:
    """The project's nginx on pebble's HTTP-01 port, starting on the placeholder certificate as
    compose starts it, with the certificate watcher polling every half second."""
    https_port = free_port()
    env = nginx_env(root, domain=DOMAIN, upstream=upstream, http_port=http_port, https_port=https_port)
    made = subprocess.run([sys.executable, str(SERVED_CERTIFICATE), "placeholder"], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**env, "CERTBOT_CONFIG_DIR": env["NGINX_CERTS_DIR"]})
    assert made.returncode == 0, made.stderr
    with running_nginx(Nginx(root, env, http_port, https_port)) as nginx:
        watcher = start_watcher(nginx, interval=0.5, log=root / "watcher.log")
        try:
            yield nginx
        finally:
            stop(watcher, timeout=5)
