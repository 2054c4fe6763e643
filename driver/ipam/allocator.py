"""Pure address arithmetic for the IPAM: parsing, overlap, picking pools and addresses.

Nothing here touches the store or the kernel, so it is unit-tested exhaustively.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from driver.errors import Conflict, InvalidRequest

IPNet = IPv4Network | IPv6Network
IPAddr = IPv4Address | IPv6Address


def parse_network(field: str, value: str, *, v6: bool | None = None) -> IPNet:
    """A CIDR with no host bits set, of the family ``v6`` asks for (if given)."""
    if "/" not in value:
        raise InvalidRequest(f"{field}: {value!r} is not a CIDR subnet (expected e.g. 10.1.0.0/24)")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidRequest(f"{field}: {value!r} is not a CIDR subnet") from None
    if net.network_address != ipaddress.ip_interface(value).ip:
        raise InvalidRequest(f"{field}: {value!r} has host bits set (did you mean {net}?)")
    if v6 is not None and (net.version == 6) != v6:
        want = "an IPv6" if v6 else "an IPv4"
        raise InvalidRequest(f"{field}: {value!r} is not {want} subnet")
    return net


def parse_address(field: str, value: str) -> IPAddr:
    """A bare address, or the address part of a CIDR (dockerd sends both shapes)."""
    try:
        return ipaddress.ip_interface(value).ip
    except ValueError:
        raise InvalidRequest(f"{field}: {value!r} is not an IP address") from None


def usable_bounds(net: IPNet) -> tuple[int, int]:
    """First and last assignable address of ``net`` as integers.

    The network address is never handed out (for IPv6 it is the subnet-router anycast
    address), nor the IPv4 broadcast address, except in /31 and /32 (RFC 3021).
    """
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen >= 31:
        return first, last
    if net.version == 6 and net.prefixlen >= 127:
        return first, last
    return first + 1, last - (1 if net.version == 4 else 0)


def check_overlap(field: str, net: IPNet, held: Iterable[tuple[str, IPNet]]) -> None:
    for pool_id, other in held:
        if net.version == other.version and net.overlaps(other):
            raise Conflict(f"{field}: {net} overlaps pool {other} already allocated ({pool_id})")


def default_candidates(specs: Iterable[str]) -> Iterator[IPNet]:
    """Subnets from ``base/len:size`` specs, e.g. ``10.200.0.0/13:24`` → 2048 /24s."""
    for spec in specs:
        base, _, size = spec.rpartition(":")
        yield from ipaddress.ip_network(base).subnets(new_prefix=int(size))


def size_only(net: IPNet) -> int | None:
    """Docker 29's "any pool of this size": ``0.0.0.0/24`` or ``::/96`` (moby#50114)."""
    return net.prefixlen if int(net.network_address) == 0 and net.prefixlen > 0 else None


def sized_candidates(specs: Iterable[str], prefixlen: int) -> Iterator[IPNet]:
    """Subnets of ``prefixlen`` from the bases of ``base/len:size`` specs (their size aside)."""
    for spec in specs:
        base = ipaddress.ip_network(spec.rpartition(":")[0])
        if prefixlen >= base.prefixlen:
            yield from base.subnets(new_prefix=prefixlen)


def pick_pool(candidates: Iterable[IPNet], avoid: Iterable[IPNet]) -> IPNet | None:
    """The first candidate that overlaps nothing in ``avoid``."""
    avoid = list(avoid)
    for cand in candidates:
        if not any(cand.version == a.version and cand.overlaps(a) for a in avoid):
            return cand
    return None


def dynamic_range(net: IPNet, within: IPNet | None) -> tuple[int, int]:
    """First and last address a request without Address may get: ``net``'s assignable
    addresses inside ``within`` (the ``--ip-range``). Empty (first > last) if none are."""
    lo, hi = usable_bounds(net)
    if within is not None:
        lo, hi = max(lo, int(within.network_address)), min(hi, int(within.broadcast_address))
    return lo, hi


def check_requested(field: str, addr: IPAddr, net: IPNet, taken: Container[int]) -> None:
    if addr.version != net.version or addr not in net:
        raise InvalidRequest(f"{field}: {addr} is outside pool {net}")
    lo, hi = usable_bounds(net)
    if not lo <= int(addr) <= hi:
        raise InvalidRequest(f"{field}: {addr} is the network or broadcast address of {net}")
    if int(addr) in taken:
        raise Conflict(f"{field}: {addr} is already allocated in pool {net}")
