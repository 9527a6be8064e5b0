"""Which addresses the parser may connect to, decided after DNS resolution.

Only globally routable unicast addresses are allowed unless private ones were explicitly
permitted: loopback, private, shared (CGNAT), link-local, multicast, reserved, unspecified and
documentation ranges are refused, for IPv4, IPv6 and IPv6 forms that embed an IPv4 address
(IPv4-mapped, 6to4, Teredo, NAT64). The fetcher connects to the very address checked here, so a
name that resolves differently a moment later (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class AddressRefused(Exception):
    """The host resolves to an address the policy refuses, or does not resolve at all."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (and every IPv4 address it embeds)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or ip in _NAT64_LOCAL:
            return False
        if not all(is_public(inner) for inner in _embedded_ipv4(ip)):
            return False
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.1.0.0/16, 127.0.0.1/32` as networks; ValueError names a bad entry."""
    networks: list[Network] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not a network like 10.0.0.0/8") from None
    return tuple(networks)


def is_allowed(ip: IPAddress, allow_private: bool, allowed: tuple[Network, ...] = ()) -> bool:
    return allow_private or is_public(ip) or any(ip in network for network in allowed)


async def resolve(host: str, port: int, *, allow_private: bool,
                  allowed: tuple[Network, ...] = ()) -> list[IPAddress]:
    """Every address `host` resolves to, checked; raises AddressRefused if any is refused
    (a name with one private address among public ones is refused whole). Addresses inside
    `allowed` networks pass even when private."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(literal)]
    except ValueError:
        addresses = await _lookup(literal, port)
    refused = [ip for ip in addresses if not is_allowed(ip, allow_private, allowed)]
    if refused:
        raise AddressRefused(
            f"refused to fetch {host}: it resolves to a private, loopback or reserved "
            f"address ({refused[0]})")
    return addresses


async def _lookup(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"cannot resolve host {host!r}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise AddressRefused(f"cannot resolve host {host!r}")
    return addresses
