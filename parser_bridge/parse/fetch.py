"""Fetching a page for the parser: http(s) only, bounded in time, size and redirects, and never
to an address `address_policy` refuses.

Every hop (the first URL and each redirect) is resolved and checked, then the connection goes
to the checked IP itself with the original `Host` header and TLS server name, so DNS cannot
answer differently between the check and the connect. Keep-alive is off so a TLS connection
verified for one name is never reused for another name on the same IP.

Only this module imports httpx for the parser; its errors become `FetchError`, whose message
is what the user reads as the request's `error`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from hub.address_policy import AddressRefused, Network, resolve
from hub.storable_text import clean
from parser_bridge.parse.html_title import extract_title
from parser_bridge.parse.result import ParseResult

log = logging.getLogger("parser_bridge.parse.fetch")
MAX_PAGE_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "notification-hub-parser/0.1 (+https://github.com/)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


class FetchError(Exception):
    """The page could not be fetched; the message says why in one line."""


@dataclass(frozen=True)
class Page:
    """A fetched page; its text is storable (`hub.storable_text.clean`)."""

    url: str  # after redirects
    html: str
    title: str | None


class PageFetcher:
    """Fetches pages under the limits above. `allow_private` lifts the address policy (for
    development and tests only); `allowed_networks` lifts it for those networks only; `verify`
    replaces the system's CA certificates. Holds no connection between fetches; safe to share."""

    def __init__(self, *, allow_private: bool, allowed_networks: tuple[Network, ...] = (),
                 timeout: float = 10.0, max_bytes: int = MAX_PAGE_BYTES,
                 verify: ssl.SSLContext | None = None) -> None:
        self.allow_private = allow_private
        self.allowed_networks = allowed_networks
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._ssl = verify  # None: the system's trust store, loaded at the first fetch

    async def parse(self, url: str) -> ParseResult:
        """The parser's answer for `url`: success with title and page, or failure saying why.
        Bounded by twice `timeout` overall."""
        try:
            async with asyncio.timeout(self.timeout * 2):
                page = await self.fetch(url)
        except FetchError as exc:
            return ParseResult.failure(str(exc))
        except TimeoutError:
            return ParseResult.failure("timed out fetching the page")
        except Exception:  # a bug on one page must not take the worker's consumer with it
            log.exception("fetching %s failed unexpectedly", url)
            return ParseResult.failure("the page could not be fetched or read")
        return ParseResult.success(page.title, page.html)

    async def fetch(self, url: str) -> Page:
        """The page at `url`; raises FetchError. Never takes longer than `timeout` seconds
        (the caller bounds it too: this only bounds each network step)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=self._ssl,
                                     timeout=httpx.Timeout(self.timeout), limits=limits,
                                     headers={"User-Agent": USER_AGENT}) as client:
            current = _parse_url(url)
            for _hop in range(MAX_REDIRECTS + 1):
                response = await self._open(client, current)
                try:
                    if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                        current = _redirect_target(current, response.headers["location"])
                        continue
                    return await self._read(current, response)
                finally:
                    await response.aclose()
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    async def _open(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Response:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await resolve(host, port, allow_private=self.allow_private,
                                      allowed=self.allowed_networks)
        except AddressRefused as exc:
            raise FetchError(str(exc)) from None
        extensions = {}
        if url.scheme == "https" and not _is_ip_literal(host):
            extensions["sni_hostname"] = host
        last_error: Exception | None = None
        for address in addresses:
            request = client.build_request(
                "GET", url.copy_with(host=str(address)),
                headers={"Host": url.netloc.decode("ascii"), "Accept": "text/html,*/*;q=0.5",
                         "Accept-Encoding": "gzip, deflate"},
                extensions=extensions)
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc
            except httpx.TimeoutException:
                raise FetchError(f"timed out connecting to {host}") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"fetch failed: {_describe(exc)}") from None
        raise FetchError(f"could not connect to {host}: {_describe(last_error)}")

    async def _read(self, url: httpx.URL, response: httpx.Response) -> Page:
        if not 200 <= response.status_code < 300:
            raise FetchError(f"the server answered HTTP {response.status_code}")
        media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media and media not in HTML_TYPES:
            raise FetchError(f"not an HTML page (content type {media})")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"the page is larger than {self.max_bytes // (1024 * 1024)} MiB")
        inflate = _inflater(response.headers.get("content-encoding", ""))
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                # decompress at most one byte past the limit: a small gzip bomb stays small
                body.extend(inflate(chunk, self.max_bytes + 1 - len(body)))
                if len(body) > self.max_bytes:
                    raise FetchError(f"the page is larger than {self.max_bytes // (1024 * 1024)} MiB")
        except httpx.TimeoutException:
            raise FetchError("timed out reading the page") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"fetch failed: {_describe(exc)}") from None
        html = clean(_decode(bytes(body), response.charset_encoding))
        return Page(url=str(url), html=html, title=extract_title(html))


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise FetchError("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError("only http and https URLs can be fetched")
    if not parsed.raw_host:
        raise FetchError("the URL has no host")
    if parsed.userinfo:
        raise FetchError("URLs with credentials are not fetched")
    return parsed


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    try:
        target = current.join(location)
    except (httpx.InvalidURL, ValueError):
        raise FetchError("the server redirected to an invalid URL") from None
    return _parse_url(str(target.copy_with(fragment=None)))


def _inflater(encoding: str) -> Callable[[bytes, int], bytes]:
    """A chunk decoder for the response's content encoding that never yields more than asked."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return lambda chunk, _room: chunk
    if name not in ("gzip", "x-gzip", "deflate"):
        raise FetchError(f"unsupported content encoding {name!r}")
    # gzip: 16 + MAX_WBITS; deflate: zlib-wrapped, as RFC 9110 says (32 + MAX_WBITS detects both)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if name != "deflate" else 32 + zlib.MAX_WBITS)

    def inflate(chunk: bytes, room: int) -> bytes:
        try:
            return decoder.decompress(chunk, max(room, 1))
        except zlib.error:
            raise FetchError(f"the page's {name} encoding is corrupt") from None

    return inflate


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _decode(body: bytes, declared: str | None) -> str:
    """Text by the declared charset, else a `<meta charset>` in the first 4 KiB, else UTF-8;
    undecodable bytes become U+FFFD rather than failing the request. A charset Python knows
    but cannot decode with replacement (`idna`, `undefined`) counts as unknown."""
    candidates = [declared]
    if match := _META_CHARSET.search(body[:4096]):
        candidates.append(match.group(1).decode("ascii"))
    for encoding in candidates:
        if encoding:
            try:
                return body.decode(encoding, errors="replace")
            except (LookupError, UnicodeError):
                continue
    return body.decode("utf-8", errors="replace")


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return "no address to connect to"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
