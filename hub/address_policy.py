"""Which addresses the hub connects to for users (parsed pages, Web Push endpoints), decided
after DNS resolution.

Only globally routable unicast addresses are allowed unless private ones were explicitly
permitted. The rule is written out below from IANA's registries (the IPv4 and IPv6
Special-Purpose Address Registries and the IPv6 Address Space), rather than left to the
`ipaddress` module alone, whose tables differ between Python versions; its checks still apply
on top. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64 `64:ff9b::/96`, 6to4) are
judged by the IPv4 address they carry. The fetcher connects to the very address checked here,
so a name that resolves differently a moment later (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


REFUSED_IPV4 = _networks(
    "0.0.0.0/8",        # "this network"
    "10.0.0.0/8",       # private
    "100.64.0.0/10",    # shared address space (carrier-grade NAT)
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local (cloud metadata services live here)
    "172.16.0.0/12",    # private
    "192.0.0.0/24",     # IETF protocol assignments (its two anycast services serve no pages)
    "192.0.2.0/24",     # documentation
    "192.88.99.0/24",   # deprecated 6to4 relay anycast
    "192.168.0.0/16",   # private
    "198.18.0.0/15",    # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",   # documentation
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, and the limited broadcast address
)
GLOBAL_UNICAST_IPV6 = ipaddress.IPv6Network("2000::/3")  # everything else is not unicast on the Internet
REFUSED_IPV6 = _networks(  # inside 2000::/3
    "2001::/23",        # IETF protocol assignments: Teredo, benchmarking, ORCHID, anycast services
    "2001:db8::/32",    # documentation
    "3fff::/20",        # documentation
)
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the IPv4 address is the last 32 bits
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class AddressRefused(Exception):
    """The host resolves to an address the policy refuses, or does not resolve at all."""


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (judged by the IPv4 address it carries,
    for the IPv6 forms that carry one)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in net for net in REFUSED_IPV4) and ip.is_global and not ip.is_multicast
    if ip.scope_id:
        return False
    if ip in IPV4_MAPPED or ip in NAT64:
        return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in SIX_TO_FOUR and not is_public(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)):
        return False
    return (ip in GLOBAL_UNICAST_IPV6 and not any(ip in net for net in REFUSED_IPV6)
            and ip.is_global and not (ip.is_private or ip.is_reserved or ip.is_site_local))


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
            f"refused {host}: it resolves to a private, loopback or reserved "
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
