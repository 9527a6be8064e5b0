"""The parser's address policy against IANA's special-purpose registries (IPv4 and IPv6), the
IPv6 address space, and the IPv6 forms that carry an IPv4 address."""

from __future__ import annotations

import ipaddress

import pytest

from hub.address_policy import AddressRefused, is_allowed, is_public, resolve

REFUSED = [
    # IPv4 special-purpose registry
    ("0.0.0.0", "this host"), ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"),
    ("100.64.0.1", "shared (CGNAT)"), ("100.127.255.254", "shared (CGNAT)"),
    ("127.0.0.1", "loopback"), ("127.1.2.3", "loopback"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.0.0.1", "IETF protocol assignments"), ("192.0.0.9", "PCP anycast"),
    ("192.0.0.170", "NAT64 discovery"),
    ("192.0.2.1", "documentation"), ("192.88.99.1", "6to4 relay anycast (deprecated)"),
    ("192.168.1.1", "private"), ("198.18.0.1", "benchmarking"), ("198.19.255.254", "benchmarking"),
    ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast (SSDP)"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "limited broadcast"),
    # IPv6 special-purpose registry and address space
    ("::", "unspecified"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("::ffff:10.1.2.3", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"), ("::ffff:100.64.0.1", "IPv4-mapped CGNAT"),
    ("::ffff:0:808:808", "IPv4-translated (SIIT)"), ("::ffff:0:7f00:1", "IPv4-translated loopback"),
    ("::7f00:1", "IPv4-compatible (deprecated)"), ("::808:808", "IPv4-compatible (deprecated)"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"), ("64:ff9b::a00:1", "NAT64 of private"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of link-local"), ("64:ff9b::c0a8:101", "NAT64 of private"),
    ("64:ff9b:1::808:808", "NAT64 local-use prefix"),
    ("100::1", "discard-only"), ("100:0:0:1::1", "dummy prefix"),
    ("2001::1", "Teredo"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo with an obfuscated private client"),
    ("2001:1::1", "PCP anycast"), ("2001:2::1", "benchmarking"), ("2001:10::1", "ORCHID (deprecated)"),
    ("2001:20::1", "ORCHIDv2"), ("2001:db8::1", "documentation"), ("3fff::1", "documentation (2024)"),
    ("2002:a00:1::1", "6to4 of private"), ("2002:7f00:1::1", "6to4 of loopback"),
    ("2002:a9fe:a9fe::1", "6to4 of link-local"), ("2002:6440:1::1", "6to4 of CGNAT"),
    ("5f00::1", "SRv6 SIDs"), ("fc00::1", "unique local"), ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"), ("febf::1", "link-local"),
    ("fec0::1", "site-local (deprecated)"), ("feff:ffff::1", "site-local (deprecated)"),
    ("ff02::1", "multicast"), ("ff0e::1", "global multicast"),
    ("4000::1", "unassigned (outside 2000::/3)"), ("e000::1", "unassigned (outside 2000::/3)"),
]

ALLOWED = [
    ("8.8.8.8", "public"), ("1.1.1.1", "public"), ("93.184.215.14", "public"),
    ("100.63.255.255", "just below CGNAT"), ("100.128.0.1", "just above CGNAT"),
    ("172.15.255.255", "just below 172.16/12"), ("172.32.0.1", "just above 172.16/12"),
    ("198.17.255.255", "just below benchmarking"), ("223.255.255.254", "just below multicast"),
    ("2606:4700:4700::1111", "public"), ("2a00:1450:4001:81c::200e", "public"),
    ("::ffff:8.8.8.8", "IPv4-mapped public"), ("64:ff9b::808:808", "NAT64 of public"),
    ("2002:808:808::1", "6to4 of public"), ("2620:4f:8000::1", "AS112 direct delegation"),
    ("3fff:1000::1", "just above 3fff::/20"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refused(address: str, why: str) -> None:
    assert not is_public(ipaddress.ip_address(address)), why


@pytest.mark.parametrize(("address", "why"), ALLOWED)
def test_allowed(address: str, why: str) -> None:
    assert is_public(ipaddress.ip_address(address)), why


def test_a_zone_scoped_address_is_refused() -> None:
    assert not is_public(ipaddress.IPv6Address("2606:4700:4700::1111%eth0"))


def test_overrides_lift_the_policy_only_where_asked() -> None:
    site_local = ipaddress.ip_address("fec0::5")
    assert not is_allowed(site_local, allow_private=False)
    assert is_allowed(site_local, allow_private=True)
    assert is_allowed(site_local, False, (ipaddress.ip_network("fec0::/10"),))
    assert not is_allowed(site_local, False, (ipaddress.ip_network("fc00::/7"),))


@pytest.mark.parametrize("host", ["[fec0::1]", "fec0::1", "[64:ff9b::a9fe:a9fe]", "[::ffff:0:7f00:1]",
                                  "192.88.99.1", "[2002:a00:1::1]", "[3fff::1]"])
async def test_literal_hosts_are_refused_before_any_connection(host: str) -> None:
    with pytest.raises(AddressRefused, match="refused"):
        await resolve(host, 80, allow_private=False)


async def test_a_public_literal_passes() -> None:
    assert await resolve("[64:ff9b::808:808]", 80, allow_private=False) == [
        ipaddress.IPv6Address("64:ff9b::808:808")]
