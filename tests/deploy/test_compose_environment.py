"""The hub started with the environment docker-compose.yml gives it (rendered by the real compose
binary from the operator's .env, made from .env.example), behind the project's nginx: a fresh
install's chat page, served from https://DOMAIN, opens /ws."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.conftest import RUN_ID, private_database, register
from tests.deploy.compose import compose_config, compose_project
from tests.deploy.conftest import DOMAIN, client_tls, public_client, ws_options, ws_url
from tests.deploy.processes import REPO, HubProcess, Nginx, free_port, nginx_env, running_nginx
from tests.deploy.tls_ca import ThrowawayCA
from tests.wsutil import connect

SECRETS = ("JWT_SECRET", "HUB_API_KEY", "PARSER_SERVICE_TOKEN", "EXCHANGE_SERVICE_TOKEN", "POSTGRES_PASSWORD")
# Addresses that exist only on the compose network, replaced by their loopback counterparts.
CONTAINER_ONLY = ("DATABASE_URL", "REDIS_URL", "TRUSTED_PROXIES", "EXCHANGE_SERVICE_URL",
                  "TLS_CERTIFICATE_FILE")


def operator_env_file() -> str:
    """.env.example as the README says to fill it in: DOMAIN and every secret, nothing else."""
    text = (REPO / ".env.example").read_text()
    text = re.sub(r"^DOMAIN=.*$", f"DOMAIN={DOMAIN}", text, flags=re.MULTILINE)
    for name in SECRETS:
        text = re.sub(rf"^{name}=.*$", f"{name}={secrets.token_urlsafe(48)}", text, flags=re.MULTILINE)
    return text


@pytest.fixture(scope="module")
def compose_hub(deploy_root: Path, redis_url: str) -> Iterator[HubProcess]:
    rendered = compose_config(compose_project(deploy_root / "compose-project", operator_env_file()))
    env = {name: str(value) for name, value in rendered["services"]["hub"]["environment"].items()
           if name not in CONTAINER_ONLY}
    with private_database("compose") as database_url:
        env.update({name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG")})
        env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "TRUSTED_PROXIES": "127.0.0.1",
                    "REDIS_CHANNEL_PREFIX": f"compose{RUN_ID}:"})
        hub = HubProcess(free_port(), env, deploy_root / "hub-compose.log")
        hub.start(workers=1)
        try:
            yield hub
        finally:
            hub.stop()


@pytest.fixture(scope="module")
def compose_proxy(deploy_root: Path, compose_hub: HubProcess, test_ca: ThrowawayCA) -> Iterator[Nginx]:
    root = deploy_root / "compose-proxy"
    http_port, https_port = free_port(), free_port()
    env = nginx_env(root, domain=DOMAIN, upstream=f"127.0.0.1:{compose_hub.port}", http_port=http_port,
                    https_port=https_port)
    live = root / "letsencrypt" / "served" / DOMAIN
    test_ca.issue([DOMAIN], live / "fullchain.pem", live / "privkey.pem")
    with running_nginx(Nginx(root, env, http_port, https_port)) as nginx:
        yield nginx


async def test_the_sites_own_origin_opens_ws_on_a_fresh_install(compose_hub: HubProcess, compose_proxy: Nginx,
                                                                test_ca: ThrowawayCA) -> None:
    assert compose_hub.env["ALLOWED_ORIGINS"] == f"https://{DOMAIN}"  # derived from DOMAIN by compose
    assert compose_hub.env["HUB_ENV"] == "production"
    tls = client_tls(test_ca.ca_file)
    port = compose_proxy.https_port
    async with public_client(port, tls) as http:
        account = await register(http)
    # What the browser sends for the chat page served from https://DOMAIN.
    socket = await connect(ws_url(port), account.access_token, origin=f"https://{DOMAIN}",
                           **ws_options(port, tls))
    try:
        assert socket.welcome["user_id"] == account.id
    finally:
        await socket.close()
    # Another site's page is still refused.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(port), origin="https://evil.example.test", **ws_options(port, tls))
    assert refused.value.response.status_code == 403
