"""certbot obtains a certificate from a local pebble (Let's Encrypt's test CA) by a real HTTP-01
challenge through the project's nginx config, nginx serves it, and a forced renewal swaps it
without dropping an open WebSocket; nginx reloads only when the certificate changed."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.conftest import register
from tests.deploy.conftest import DOMAIN, client_tls, public_client, ws_options, ws_url
from tests.deploy.processes import (
    REPO,
    HubProcess,
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
from tests.wsutil import connect

pytestmark = pytest.mark.slow

CERTIFICATES = REPO / "certbot" / "certificates.sh"
SERVED_CERTIFICATE = REPO / "certbot" / "served_certificate.py"


@dataclass
class Pebble:
    directory_url: str
    management_url: str


@pytest.fixture(scope="module")
def pebble(deploy_root: Path, test_ca: ThrowawayCA) -> Iterator[tuple[Pebble, int]]:
    """pebble validating HTTP-01 on a port nginx will listen on, resolving every name to 127.0.0.1
    through pebble-challtestsrv's DNS; yields it and that HTTP port."""
    root = deploy_root / "pebble"
    root.mkdir()
    http_port, acme_port, management_port = free_port(), free_port(), free_port()
    dns_port, challtest_management = free_port(), free_port()
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
    with (root / "challtestsrv.log").open("ab") as out:
        dns = subprocess.Popen(
            ["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{challtest_management}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)
    # No PEBBLE_VA_ALWAYS_VALID: every challenge is really fetched from nginx.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEBBLE_VA_NOSLEEP": "1",
           "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    with (root / "pebble.log").open("ab") as out:
        ca = subprocess.Popen(["pebble", "-config", str(root / "pebble.json"), "-dnsserver",
                               f"127.0.0.1:{dns_port}"],
                              env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              preexec_fn=die_with_parent)
    try:
        wait_for_port(challtest_management, dns)
        wait_for_port(acme_port, ca)
        wait_for_port(management_port, ca)
        yield Pebble(f"https://127.0.0.1:{acme_port}/dir", f"https://127.0.0.1:{management_port}"), http_port
    finally:
        stop(ca)
        stop(dns)


def certificates(command: list[str], nginx: Nginx, test_ca: ThrowawayCA, pebble: Pebble) -> str:
    """Run certbot/certificates.sh as the certbot container does, against pebble."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DOMAIN": DOMAIN,
        "CERTBOT_EMAIL": "",
        "CERTBOT_SERVER": pebble.directory_url,
        "CERTBOT_CONFIG_DIR": str(nginx.root / "letsencrypt"),
        "CERTBOT_WORK_DIR": str(nginx.root / "certbot-work"),
        "CERTBOT_LOGS_DIR": str(nginx.root / "certbot-logs"),
        "CERTBOT_WEBROOT": str(nginx.root / "webroot"),
        "REQUESTS_CA_BUNDLE": str(test_ca.ca_file),  # pebble's ACME endpoint's own certificate
        "PYTHON": sys.executable,  # the certbot image's python3, with cryptography
    }
    done = subprocess.run(["sh", str(CERTIFICATES), *command], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}\n{tail(nginx.error_log)}"
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


@pytest.fixture(scope="module")
def acme_nginx(deploy_root: Path, deploy_hub: HubProcess, pebble: tuple[Pebble, int]) -> Iterator[Nginx]:
    """The project's nginx on pebble's HTTP-01 port, starting on the placeholder certificate."""
    root = deploy_root / "acme"
    https_port = free_port()
    env = nginx_env(root, domain=DOMAIN, upstream=f"127.0.0.1:{deploy_hub.port}", http_port=pebble[1],
                    https_port=https_port)
    made = subprocess.run([sys.executable, str(SERVED_CERTIFICATE), "placeholder"], capture_output=True,
                          text=True, timeout=30,
                          env={**env, "CERTBOT_CONFIG_DIR": env["NGINX_CERTS_DIR"]}, check=False)
    assert made.returncode == 0, made.stderr
    with running_nginx(Nginx(root, env, pebble[1], https_port)) as nginx:
        watcher = start_watcher(nginx, interval=0.5, log=root / "watcher.log")
        try:
            yield nginx
        finally:
            stop(watcher, timeout=5)


async def test_certbot_issues_by_http01_and_a_forced_renewal_keeps_open_websockets(
        acme_nginx: Nginx, pebble: tuple[Pebble, int], test_ca: ThrowawayCA, deploy_hub: HubProcess) -> None:
    nginx, (ca, _) = acme_nginx, pebble
    served = nginx.root / "letsencrypt" / "served" / DOMAIN
    placeholder = await served_certificate(nginx)
    assert served.resolve() == (nginx.root / "letsencrypt" / "placeholder" / DOMAIN).resolve()
    assert placeholder.issuer == placeholder.subject  # self-signed
    assert nginx.reloads() == 0

    # First issuance: certbot answers pebble's HTTP-01 challenge through nginx's webroot.
    issued_log = await asyncio.to_thread(certificates, ["issue"], nginx, test_ca, ca)
    assert "Successfully received certificate" in issued_log
    assert (nginx.root / "letsencrypt" / "renewal" / f"{DOMAIN}.conf").exists()
    challenges = [line for line in nginx.access_log.read_text().splitlines()
                  if '"GET /.well-known/acme-challenge/' in line]
    assert challenges, "pebble never fetched the HTTP-01 answer from nginx"
    assert all('HTTP/1.1" 200 ' in line for line in challenges), challenges
    first = await wait_for_new_certificate(nginx, placeholder)
    assert first.issuer != first.subject
    assert nginx.reloads() == 1

    # A client that trusts only pebble's root accepts what nginx now serves.
    async with httpx.AsyncClient(verify=client_tls(test_ca.ca_file), timeout=10) as management:
        root_pem = (await management.get(f"{ca.management_url}/roots/0")).text
    pebble_root = nginx.root / "pebble-root.pem"
    pebble_root.write_text(root_pem)
    trust_pebble = client_tls(pebble_root)
    async with public_client(nginx.https_port, trust_pebble) as http:
        account = await register(http)
        socket = await connect(ws_url(nginx.https_port), account.access_token,
                               **ws_options(nginx.https_port, trust_pebble))
        try:
            # A renewal pass with nothing due changes nothing, so nginx is not reloaded.
            quiet = await asyncio.to_thread(certificates, ["renew"], nginx, test_ca, ca)
            assert "not yet due for renewal" in quiet
            await asyncio.sleep(2)
            assert nginx.reloads() == 1
            assert (await served_certificate(nginx)).serial_number == first.serial_number

            # A forced renewal writes a new certificate; the watcher reloads nginx once.
            await asyncio.to_thread(certificates, ["renew", "--force-renewal"], nginx, test_ca, ca)
            second = await wait_for_new_certificate(nginx, first)
            assert second.issuer != second.subject
            await asyncio.sleep(1)
            assert nginx.reloads() == 2

            # The socket opened before the swap is still served, live events included.
            await socket.send({"type": "ping"})
            assert (await socket.next())["type"] == "pong"
            published = await http.post(
                "/api/v1/publish", json={"user_ids": [account.id], "name": "deploy.renewed"},
                headers={"Authorization": f"Bearer {deploy_hub.env['HUB_API_KEY']}"})
            assert published.status_code == 202, published.text
            assert (await socket.next())["name"] == "deploy.renewed"
        finally:
            await socket.close()
        # New connections get the renewed certificate, trusted through pebble's root.
        assert (await http.get("/healthz")).status_code == 200
