"""Fixtures of the deployment tests: a hub under `hub serve --workers 2` on PostgreSQL and Redis,
a throw-away CA, and clients that reach nginx on loopback under the public name of the deployment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RUN_ID, private_database
from tests.deploy.processes import HubProcess, free_port
from tests.deploy.tls_ca import ThrowawayCA

DOMAIN = "hub.deploy.test"


@pytest.fixture(scope="session")
def deploy_root() -> Iterator[Path]:
    """A private directory the nginx workers (user nobody when run as root) can traverse."""
    root = Path(tempfile.mkdtemp(prefix=f"hub-deploy-{RUN_ID}-"))
    root.chmod(0o755)
    yield root
    if not os.environ.get("HUB_KEEP_DEPLOY_ROOT"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def test_ca(deploy_root: Path) -> ThrowawayCA:
    return ThrowawayCA.create(deploy_root / "ca")


@pytest.fixture(scope="package")
def deploy_hub(deploy_root: Path, redis_url: str) -> Iterator[HubProcess]:
    """`hub migrate`, then `hub serve --workers 2` (gunicorn + uvicorn workers) in production mode,
    trusting forwarded headers from 127.0.0.1 (nginx) only, pinging sockets every second. It has
    a database of its own: its background loops (parse dispatch, timeouts) must not take the rows
    of the hubs that other tests start."""
    log = deploy_root / "hub.log"
    with private_database("deploy") as database_url, \
            HubProcess(free_port(), hub_env(database_url, redis_url), log).running(workers=2) as hub:
        yield hub


@pytest.fixture(scope="session")
def challenge_dns(deploy_root: Path) -> Iterator[Any]:
    """pebble-challtestsrv: the DNS every pebble of the session resolves names with."""
    from tests.deploy.acme import running_challenge_dns  # acme imports this module

    with running_challenge_dns(deploy_root / "challenge-dns") as dns:
        yield dns


def hub_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")},
        "HUB_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL_PREFIX": f"deploy{RUN_ID}:",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "HUB_API_KEY": secrets.token_urlsafe(32),
        "PARSER_SERVICE_TOKEN": secrets.token_urlsafe(32),
        "EXCHANGE_SERVICE_TOKEN": secrets.token_urlsafe(32),
        "WS_PING_INTERVAL": "1",
        "TRUSTED_PROXIES": "127.0.0.1",
        "AUTH_RATE_LIMIT": "100000",  # every test user signs in from 127.0.0.1
        "LOG_LEVEL": "INFO",
    }


def client_tls(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts only `ca_file` (not the system's roots)."""
    return ssl.create_default_context(cafile=str(ca_file))


class _PublicNameTransport(httpx.AsyncBaseTransport):
    """Dials 127.0.0.1 but speaks TLS and HTTP as a client of https://DOMAIN would (SNI, Host)."""

    def __init__(self, domain: str, verify: ssl.SSLContext | bool) -> None:
        self._domain = domain
        self._inner = httpx.AsyncHTTPTransport(verify=verify, retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "sni_hostname": self._domain}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def public_client(port: int, verify: ssl.SSLContext | bool, *, scheme: str = "https",
                  domain: str = DOMAIN, **options: Any) -> httpx.AsyncClient:
    """An httpx client for `scheme`://domain:port that connects to 127.0.0.1:port."""
    return httpx.AsyncClient(base_url=f"{scheme}://127.0.0.1:{port}", headers={"Host": f"{domain}:{port}"},
                             transport=_PublicNameTransport(domain, verify), timeout=10,
                             follow_redirects=False, **options)


def ws_options(port: int, tls: ssl.SSLContext) -> dict[str, Any]:
    """websockets.connect options for wss://DOMAIN:port/ws dialled at 127.0.0.1."""
    return {"ssl": tls, "host": "127.0.0.1", "port": port, "proxy": None, "open_timeout": 10,
            "close_timeout": 5}


def ws_url(port: int, domain: str = DOMAIN) -> str:
    return f"wss://{domain}:{port}/ws"
