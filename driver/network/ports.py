"""Published ports: parse dockerd's port map and resolve each binding to a host port.

dockerd passes ``-p`` through untouched (``HostPort`` 0 means "pick one", a
``HostPort``-``HostPortEnd`` range means "any free one in it") and programs nothing for
a remote driver, so choosing, checking and remembering host ports is ours.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

from driver.errors import Conflict, InvalidRequest
from driver.firewall.rules import PROTOCOLS
from driver.state import PortBinding

log = logging.getLogger(__name__)

PORTMAP = "com.docker.network.portmap"
EXPOSED = "com.docker.network.endpoint.exposedports"
_SOCK_TYPES = {6: socket.SOCK_STREAM, 17: socket.SOCK_DGRAM, 132: socket.SOCK_SEQPACKET}


def _int(where: str, entry: dict[str, Any], key: str, bounds: tuple[int, int], default: int | None = None) -> int:
    low, high = bounds
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{where}.{key}: {value!r} is not a number in {low}-{high}")
    return value


def _proto(where: str, entry: dict[str, Any]) -> int:
    proto = entry.get("Proto")
    # Type first: a list or map (unhashable) must be refused too, not fail the look-up.
    if isinstance(proto, bool) or not isinstance(proto, int) or proto not in PROTOCOLS:
        raise InvalidRequest(f"{where}.Proto: unknown protocol number {proto!r} (expected 6 tcp, 17 udp, 132 sctp)")
    return int(proto)


def _entries(field: str, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise InvalidRequest(f"Options.{field}: must be a list of objects")
    return value


def parse_portmap(value: Any) -> list[PortBinding]:
    out = []
    for i, entry in enumerate(_entries(PORTMAP, value)):
        where = f"Options.{PORTMAP}[{i}]"
        host_ip = entry.get("HostIP") or ""
        if not isinstance(host_ip, str):
            raise InvalidRequest(f"{where}.HostIP: must be a string")
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except ValueError:
                raise InvalidRequest(f"{where}.HostIP: {host_ip!r} is not an IP address") from None
        start = _int(where, entry, "HostPort", (0, 65535), 0)
        end = _int(where, entry, "HostPortEnd", (0, 65535), 0)
        if end and end < start:
            raise InvalidRequest(f"{where}.HostPortEnd: {end} is below HostPort {start}")
        out.append(PortBinding(
            proto=_proto(where, entry), port=_int(where, entry, "Port", (1, 65535)),
            host_ip=host_ip, host_port=start, host_port_end=max(end, start),
        ))
    return out


def check_exposed(value: Any) -> None:
    for i, entry in enumerate(_entries(EXPOSED, value)):
        where = f"Options.{EXPOSED}[{i}]"
        _proto(where, entry)
        _int(where, entry, "Port", (1, 65535))


WILDCARDS = ("", "0.0.0.0", "::")


def families(host_ip: str) -> set[int]:
    """IP versions a binding listens on: "" is both, like Docker's default binding."""
    if not host_ip:
        return {4, 6}
    return {ipaddress.ip_address(host_ip).version}


def _overlaps(a: PortBinding, b: PortBinding) -> bool:
    if a.proto != b.proto or a.host_port != b.host_port or not families(a.host_ip) & families(b.host_ip):
        return False
    return a.host_ip in WILDCARDS or b.host_ip in WILDCARDS or a.host_ip == b.host_ip


def _describe(b: PortBinding) -> str:
    host = f"[{b.host_ip}]" if ":" in b.host_ip else (b.host_ip or "*")
    return f"{PROTOCOLS[b.proto]} {host}:{b.host_port}"


def _bindable(b: PortBinding) -> bool:
    """Whether a host process could take the port (then our DNAT would steal its traffic)."""
    family = socket.AF_INET6 if ":" in b.host_ip else socket.AF_INET
    addr = b.host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    try:
        with socket.socket(family, _SOCK_TYPES[b.proto]) as s:
            s.bind((addr, b.host_port))
    except OSError as err:
        if err.errno == errno.EADDRNOTAVAIL:
            raise Conflict(f"cannot publish {_describe(b)}: {b.host_ip} is not an address of this host") from None
        # Cannot tell (e.g. no SCTP module): don't refuse for it.
        return err.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT)
    return True


def same_request(wanted: list[PortBinding], resolved: list[PortBinding]) -> bool:
    """Whether ``resolved`` already satisfies ``wanted`` (a repeated Program)."""
    if len(wanted) != len(resolved):
        return False
    return all(
        (w.proto, w.port, w.host_ip) == (r.proto, r.port, r.host_ip)
        and (w.host_port == 0 or w.host_port <= r.host_port <= w.host_port_end)
        for w, r in zip(wanted, resolved, strict=True)
    )


def resolve(wanted: list[PortBinding], taken: Iterable[PortBinding], ephemeral: tuple[int, int]) -> list[PortBinding]:
    """Concrete host ports for ``wanted``: requested ones checked, ranges and 0 filled in."""
    held = list(taken)
    out: list[PortBinding] = []
    for b in wanted:
        lo, hi = (b.host_port, b.host_port_end) if b.host_port else ephemeral
        chosen = None
        for port in range(lo, hi + 1):
            cand = b.model_copy(update={"host_port": port, "host_port_end": port})
            if not any(_overlaps(cand, h) for h in held) and _bindable(cand):
                chosen = cand
                break
        if chosen is None:
            what = _describe(b) if lo == hi else f"{PROTOCOLS[b.proto]} {b.host_ip or '*'}:{lo}-{hi}"
            raise Conflict(f"cannot publish {what}: the port is already in use")
        if not b.host_port or b.host_port != b.host_port_end:
            log.info("published %s (picked for -p %s)", _describe(chosen), b.port)
        held.append(chosen)
        out.append(chosen)
    return out


def default_host_ip(b: PortBinding, host_binding_ipv4: str) -> PortBinding:
    """``com.docker.network.bridge.host_binding_ipv4``, as Docker's bridge uses it: the
    address for a ``-p`` that names none (which is then IPv4 only)."""
    if b.host_ip or host_binding_ipv4 == "0.0.0.0":
        return b
    return b.model_copy(update={"host_ip": host_binding_ipv4})


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    return lo, hi
