"""HTTPS through the fetcher: it connects to the checked IP yet verifies the certificate against
the URL's host name (SNI), so pinning the address does not weaken TLS."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parser_bridge.parse.fetch import FetchError, PageFetcher
from tests.certs import self_signed
from tests.conftest import free_port


@pytest.fixture
async def https_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    cert_path, key_path = self_signed(tmp_path)

    async def page(request: Request) -> Response:
        return Response(f"<title>tls for {request.headers['host']}</title>", media_type="text/html")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/", page)]), host="127.0.0.1", port=port, lifespan="off",
        log_config=None, access_log=False, ssl_certfile=str(cert_path), ssl_keyfile=str(key_path)))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        yield port, cert_path
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


async def test_https_verifies_the_host_name_while_connecting_to_the_checked_ip(
        https_server: tuple[int, Path]) -> None:
    port, cert_path = https_server
    trust = ssl.create_default_context(cafile=str(cert_path))
    fetcher = PageFetcher(allow_private=True, timeout=5, verify=trust,
                          allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    async with asyncio.timeout(15):
        page = await fetcher.fetch(f"https://localhost:{port}/")
        assert page.title == f"tls for localhost:{port}"
        # same server and address, but the certificate does not name 127.0.0.1
        with pytest.raises(FetchError, match=r"(?i)certificate verify failed"):
            await fetcher.fetch(f"https://127.0.0.1:{port}/")
        # and with the system's trust store the self-signed certificate is refused
        with pytest.raises(FetchError, match=r"(?i)certificate verify failed"):
            await PageFetcher(allow_private=True, timeout=5).fetch(f"https://localhost:{port}/")
