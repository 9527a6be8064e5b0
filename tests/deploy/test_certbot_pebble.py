"""certbot obtains a certificate from a local pebble (Let's Encrypt's test CA) by a real HTTP-01
challenge through the project's nginx config, nginx serves it, and a forced renewal swaps it
without dropping an open WebSocket; nginx reloads only when the certificate changed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import register
from tests.deploy.acme import (
    ChallengeDns,
    Pebble,
    certificates,
    running_acme_nginx,
    running_pebble,
    served_certificate,
    wait_for_new_certificate,
)
from tests.deploy.conftest import DOMAIN, client_tls, public_client, ws_options, ws_url
from tests.deploy.processes import HubProcess, Nginx, free_port
from tests.deploy.tls_ca import ThrowawayCA
from tests.wsutil import connect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pebble(deploy_root: Path, test_ca: ThrowawayCA,
           challenge_dns: ChallengeDns) -> Iterator[tuple[Pebble, int]]:
    """pebble validating HTTP-01 on a port nginx will listen on; yields it and that HTTP port."""
    http_port = free_port()
    with running_pebble(deploy_root / "pebble", test_ca, http_port, challenge_dns) as ca:
        yield ca, http_port


@pytest.fixture(scope="module")
def acme_nginx(deploy_root: Path, deploy_hub: HubProcess, pebble: tuple[Pebble, int]) -> Iterator[Nginx]:
    with running_acme_nginx(deploy_root / "acme", f"127.0.0.1:{deploy_hub.port}", pebble[1]) as nginx:
        yield nginx


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
    assert served.resolve() == (nginx.root / "letsencrypt" / "live" / DOMAIN).resolve()
    # the public chain the hub reads for its expiry metric follows what nginx serves
    public = x509.load_pem_x509_certificate((nginx.root / "tls-public" / "fullchain.pem").read_bytes())
    assert public.serial_number == first.serial_number
    assert nginx.reloads() == 1

    # A client that trusts only pebble's root accepts what nginx now serves.
    pebble_root = nginx.root / "pebble-root.pem"
    pebble_root.write_text(await asyncio.to_thread(ca.root_pem, test_ca))
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
