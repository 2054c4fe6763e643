"""Turn dockerd's requests into records, checking every field on the way.

Everything here raises ``InvalidRequest`` naming the field, before anything is created.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from driver.api import models
from driver.errors import InvalidRequest
from driver.ipam.allocator import parse_address, parse_network
from driver.network.options import parse_options
from driver.state import NetworkRecord, SubnetRecord

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"


def network_record(req: models.CreateNetworkRequest) -> NetworkRecord:
    opts = req.Options
    generic = opts.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise InvalidRequest(f"Options.{GENERIC}: must be a map of strings")
    return NetworkRecord(
        id=req.NetworkID,
        config=parse_options(generic, internal=_flag(opts, INTERNAL), enable_ipv6=_flag(opts, ENABLE_IPV6)),
        ipv4=[_subnet("IPv4Data", i, d, v6=False) for i, d in enumerate(req.IPv4Data)],
        ipv6=[_subnet("IPv6Data", i, d, v6=True) for i, d in enumerate(req.IPv6Data)],
    )


def _flag(opts: Mapping[str, Any], key: str) -> bool:
    value = opts.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"Options.{key}: must be a boolean")
    return value


def _subnet(field: str, i: int, data: models.IPAMData, v6: bool) -> SubnetRecord:
    where = f"{field}[{i}]"
    pool = parse_network(f"{where}.Pool", data.Pool, v6=v6)
    gateway = None
    if data.Gateway:
        gw = parse_address(f"{where}.Gateway", data.Gateway)
        if gw not in pool:
            raise InvalidRequest(f"{where}.Gateway: {gw} is outside pool {pool}")
        gateway = f"{gw}/{pool.prefixlen}"
    aux = {k: str(parse_address(f"{where}.AuxAddresses.{k}", v)) for k, v in data.AuxAddresses.items()}
    return SubnetRecord(pool=str(pool), space=data.AddressSpace, gateway=gateway, aux=aux)


def endpoint_address(field: str, value: str, subnets: list[SubnetRecord]) -> str | None:
    """An endpoint's CIDR address, which must sit in one of the network's subnets."""
    if not value:
        return None
    if "/" not in value:
        raise InvalidRequest(f"{field}: {value!r} has no prefix length")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise InvalidRequest(f"{field}: {value!r} is not an address in CIDR form") from None
    if not any(iface.ip in ipaddress.ip_network(s.pool) for s in subnets):
        raise InvalidRequest(f"{field}: {value} is in none of the network's subnets")
    return str(iface)


def gateway_for(address: str | None, subnets: list[SubnetRecord]) -> str | None:
    """The gateway of the subnet holding ``address``, as a bare IP (what Join returns)."""
    if not address:
        return None
    ip = ipaddress.ip_interface(address).ip
    for s in subnets:
        if s.gateway and ip in ipaddress.ip_network(s.pool):
            return str(ipaddress.ip_interface(s.gateway).ip)
    return None
