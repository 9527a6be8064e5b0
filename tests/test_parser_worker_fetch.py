"""The parser's fetcher and address policy, against a real web server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest

from hub.address_policy import is_public, parse_networks
from parser_bridge.parse.fetch import FetchError, PageFetcher
from parser_bridge.parse.html_title import extract_title
from tests.page_server import PAGE, TITLE, PageServer, serve_pages


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with serve_pages() as server:
        yield server


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::",
    "2002:a00:1::", "64:ff9b::7f00:1", "64:ff9b::a00:1", "2001:db8::1", "100::1",
])
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::6810:84e5",
                                     "2a00:1450:4001:82a::200e"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_allowed_networks_parse() -> None:
    assert parse_networks(" 10.0.0.0/8, ::1/128 ,") == (ipaddress.ip_network("10.0.0.0/8"),
                                                       ipaddress.ip_network("::1/128"))
    with pytest.raises(ValueError, match="nope"):
        parse_networks("10.0.0.0/8,nope")


def test_title_comes_from_a_real_html_parser() -> None:
    assert extract_title(PAGE) == TITLE
    assert extract_title("<html><body>no title</body></html>") is None
    assert extract_title("<TITLE>Upper &amp; case</TITLE><title>second</title>") == "Upper & case"
    assert extract_title("<!-- <title>commented</title> --><title>real</title>") == "real"
    assert extract_title("<title>" + "x" * 5000 + "</title>") == "x" * 1000


async def fetch(url: str, **options: object) -> str | None:
    fetcher = PageFetcher(allow_private=True, timeout=5, **options)  # type: ignore[arg-type]
    async with asyncio.timeout(15):
        page = await fetcher.fetch(url)
    return page.title


async def refused(url: str, fetcher: PageFetcher | None = None) -> str:
    fetcher = fetcher or PageFetcher(allow_private=True, timeout=5)
    async with asyncio.timeout(15):
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(url)
    return str(caught.value)


async def test_fetches_a_page_and_its_title(pages: PageServer) -> None:
    assert await fetch(pages.url("/page")) == TITLE
    assert await fetch(pages.url("/cp1251")) == "Привет"
    assert await fetch(pages.url("/redirect?to=/page")) == TITLE


async def test_limits_are_enforced(pages: PageServer) -> None:
    assert "larger than 5 MiB" in await refused(pages.url("/big"))
    assert "larger than 5 MiB" in await refused(pages.url("/bomb"))
    assert "more than 5 redirects" in await refused(pages.url("/loop/0"))
    assert "not an HTML page" in await refused(pages.url("/image"))
    assert "HTTP 404" in await refused(pages.url("/missing"))
    for url in ("ftp://127.0.0.1/", "file:///etc/passwd", "http:///x", "http://u:p@127.0.0.1/"):
        assert await refused(url)
    assert "only http and https" in await refused(pages.url("/redirect?to=file:///etc/passwd"))
    slow = PageFetcher(allow_private=True, timeout=0.5)
    async with asyncio.timeout(5):
        result = await slow.parse(pages.url("/hang"))
    assert result.status == "failure"
    assert "timed out" in (result.error or "")


async def test_private_targets_are_refused_without_the_override(pages: PageServer) -> None:
    strict = PageFetcher(allow_private=False, timeout=5)
    port = pages.base_url.rsplit(":", 1)[1]
    for url in (pages.url("/page"), f"http://localhost:{port}/page", f"http://[::1]:{port}/page",
                f"http://[::ffff:127.0.0.1]:{port}/page", "http://10.0.0.1/", "http://2130706433/",
                "http://0x7f.1/", "http://169.254.169.254/latest/meta-data/"):
        assert "refused" in await refused(url, strict), url
    assert pages.hits["page"] == 0


async def test_every_redirect_hop_is_checked(pages: PageServer) -> None:
    only_first_hop = PageFetcher(allow_private=False, timeout=5,
                                 allowed_networks=parse_networks("127.0.0.1/32"))
    assert (await only_first_hop.fetch(pages.url("/page"))).title == TITLE
    port = pages.base_url.rsplit(":", 1)[1]
    for target in (f"http://127.0.0.2:{port}/page", f"http://[::1]:{port}/page", "http://10.0.0.1/",
                   "http://169.254.169.254/"):
        message = await refused(pages.url(f"/redirect?to={target}"), only_first_hop)
        assert "refused" in message, (target, message)
