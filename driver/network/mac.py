"""MAC addresses for container interfaces and bridges."""

from __future__ import annotations

import ipaddress
import os
import re

from driver.errors import InvalidRequest

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def mac_for(ipv4_cidr: str | None) -> str:
    """Docker's scheme: 02:42 followed by the IPv4 address, so a reused address keeps
    its MAC and neighbours' ARP caches stay right; random when there is no IPv4."""
    if not ipv4_cidr:
        return random_mac()
    packed = ipaddress.ip_interface(ipv4_cidr).ip.packed
    return "02:42:" + ":".join(f"{x:02x}" for x in packed)


def check_mac(field: str, value: str) -> str:
    if not _MAC_RE.match(value):
        raise InvalidRequest(f"{field}: {value!r} is not a MAC address (expected xx:xx:xx:xx:xx:xx)")
    first = int(value[:2], 16)
    if first & 1:
        raise InvalidRequest(f"{field}: {value} is a multicast MAC address")
    return value.lower()
