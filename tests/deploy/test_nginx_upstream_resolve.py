"""nginx finds the hub again after it moved to another address, without a reload: what
`docker compose up -d --build` does (a new hub container, a new address under the same name).
A small DNS server on loopback stands in for Docker's; the hub moves from 127.0.0.2 to 127.0.0.3."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import private_database
from tests.deploy.conftest import DOMAIN, client_tls, hub_env, public_client
from tests.deploy.dns_responder import DnsResponder
from tests.deploy.processes import HubProcess, Nginx, free_port, nginx_env, running_nginx
from tests.deploy.tls_ca import ThrowawayCA

HUB_NAME = "hub.internal.test"
RESOLVER_VALID = 2.0


@pytest.fixture
def hub_database() -> Iterator[str]:
    with private_database("resolve") as database_url:
        yield database_url


async def test_nginx_follows_the_hub_to_its_new_address_without_a_reload(
        deploy_root: Path, test_ca: ThrowawayCA, redis_url: str, hub_database: str) -> None:
    port = free_port()
    env = hub_env(hub_database, redis_url)
    old = HubProcess(port, env, deploy_root / "hub-old-address.log", host="127.0.0.2")
    new = HubProcess(port, env, deploy_root / "hub-new-address.log", host="127.0.0.3")
    root = deploy_root / "resolve"
    http_port, https_port = free_port(), free_port()
    tls = client_tls(test_ca.ca_file)
    with DnsResponder({HUB_NAME: "127.0.0.2"}).running() as dns:
        nginx = Nginx(root, nginx_env(root, domain=DOMAIN, upstream=f"{HUB_NAME}:{port}", http_port=http_port,
                                      https_port=https_port, NGINX_RESOLVER=f"127.0.0.1:{dns.port}",
                                      NGINX_RESOLVER_VALID=f"{RESOLVER_VALID:g}s"),
                      http_port, https_port)
        live = root / "letsencrypt" / "served" / DOMAIN
        test_ca.issue([DOMAIN], live / "fullchain.pem", live / "privkey.pem")
        old.start(workers=1)
        try:
            with running_nginx(nginx):
                async with public_client(https_port, tls) as http:
                    assert (await http.get("/healthz")).status_code == 200
                    assert HUB_NAME in dns.queries
                    # The old container goes away; the new one comes up elsewhere, same name.
                    old.stop()
                    new.start(workers=1)
                    dns.records[HUB_NAME] = "127.0.0.3"
                    moved = time.monotonic()
                    async with asyncio.timeout(RESOLVER_VALID + 10):
                        while (await http.get("/healthz")).status_code != 200:
                            await asyncio.sleep(0.1)
                    # within the resolver's valid= time (plus slack for a loaded machine)
                    assert time.monotonic() - moved < RESOLVER_VALID + 5
                    assert (await http.get("/healthz")).status_code == 200
                assert nginx.reloads() == 0
                await asyncio.sleep(0.2)
                assert "upstream=127.0.0.3:" in nginx.access_log.read_text().splitlines()[-1]
        finally:
            old.stop()
            new.stop()
