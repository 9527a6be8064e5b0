"""The hub started with the environment docker-compose.yml gives it (rendered by the real compose
binary from the operator's .env, made from .env.example), behind the project's nginx: a fresh
install's chat page, served from https://DOMAIN, opens /ws."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from cryptography import x509

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
    # The tls-public volume: what the certificate-placeholder one-shot writes into it.
    public_dir = deploy_root / "compose-tls-public"
    one_shot_env = {"DOMAIN": DOMAIN, "CERTBOT_CONFIG_DIR": str(deploy_root / "compose-letsencrypt"),
                    "CERTBOT_PUBLIC_DIR": str(public_dir)}
    made = subprocess.run([sys.executable, str(REPO / "certbot" / "served_certificate.py"), "placeholder"],
                          env=one_shot_env, capture_output=True, text=True, timeout=30, check=False)
    assert made.returncode == 0, made.stderr
    assert rendered["services"]["hub"]["environment"]["TLS_CERTIFICATE_FILE"] == "/run/hub-tls/fullchain.pem"
    with private_database("compose") as database_url:
        env.update({name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG")})
        env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "TRUSTED_PROXIES": "127.0.0.1",
                    "REDIS_CHANNEL_PREFIX": f"compose{RUN_ID}:",
                    "TLS_CERTIFICATE_FILE": str(public_dir / "fullchain.pem")})
        with HubProcess(free_port(), env, deploy_root / "hub-compose.log").running(1) as hub:
            yield hub


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


async def test_metrics_expose_the_served_certificates_expiry(compose_hub: HubProcess) -> None:
    """Let's Encrypt sends no expiry e-mails: the hub's /metrics (scraped on the compose network)
    carries notAfter of the certificate nginx serves, here the placeholder the one-shot wrote."""
    served = x509.load_pem_x509_certificate(Path(compose_hub.env["TLS_CERTIFICATE_FILE"]).read_bytes())
    async with httpx.AsyncClient(base_url=compose_hub.base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    found = re.search(r"^hub_tls_certificate_expiry_timestamp_seconds (\S+)$", text, flags=re.MULTILINE)
    assert found, text
    assert float(found.group(1)) == served.not_valid_after_utc.timestamp()
