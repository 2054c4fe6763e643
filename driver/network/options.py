"""``docker network create -o …`` options → a typed, validated ``NetworkConfig``.

Keys mirror Docker's built-in drivers where one exists (``com.docker.network.bridge.*``,
``com.docker.network.driver.mtu``, ``parent``, ``macvlan_mode``) so users' commands carry
over. Every value arrives as a string; each is checked strictly here, before anything is
created, and a bad one is reported with its key.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from driver.errors import InvalidRequest

log = logging.getLogger(__name__)

Mode = Literal["bridge", "macvlan"]
MacvlanMode = Literal["bridge", "private", "vepa", "passthru"]

MODE = "mode"
BRIDGE_NAME = "com.docker.network.bridge.name"
ENABLE_ICC = "com.docker.network.bridge.enable_icc"
ENABLE_MASQ = "com.docker.network.bridge.enable_ip_masquerade"
HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
MTU = "com.docker.network.driver.mtu"
IFACE_PREFIX = "com.docker.network.container_iface_prefix"
PARENT = "parent"
MACVLAN_MODE = "macvlan_mode"

KNOWN_KEYS = frozenset(
    {MODE, BRIDGE_NAME, ENABLE_ICC, ENABLE_MASQ, HOST_BINDING, MTU, IFACE_PREFIX, PARENT, MACVLAN_MODE}
)
# Keys dockerd itself puts into the generic map (daemon default-network-opts and the like).
_IGNORED_PREFIXES = ("com.docker.network.",)

# Linux accepts almost any byte in an interface name; we accept the portable subset, which
# keeps names safe to use in /proc/sys paths and iptables arguments.
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,7}$")
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}

MIN_MTU, MAX_MTU, MIN_MTU_V6 = 68, 65535, 1280


class NetworkConfig(BaseModel):
    mode: Mode = "bridge"
    bridge_name: str | None = None
    mtu: int | None = None
    icc: bool = True
    masquerade: bool = True
    host_binding_ipv4: str = "0.0.0.0"
    iface_prefix: str = "eth"
    internal: bool = False
    enable_ipv6: bool = False
    parent: str | None = None
    macvlan_mode: MacvlanMode = "bridge"


def parse_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidRequest(f"option {key}: {value!r} is not a boolean (use true or false)")


def check_ifname(key: str, value: str) -> str:
    if value in {".", ".."} or not IFNAME_RE.match(value):
        raise InvalidRequest(
            f"option {key}: {value!r} is not a valid interface name "
            "(1-15 characters: letters, digits, '_', '.', '-'; starting with a letter or digit)"
        )
    return value


def parse_mtu(value: str, enable_ipv6: bool) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"option {MTU}: {value!r} is not an integer")
    mtu = int(value)
    low = MIN_MTU_V6 if enable_ipv6 else MIN_MTU
    if not low <= mtu <= MAX_MTU:
        why = " (IPv6 needs at least 1280)" if enable_ipv6 else ""
        raise InvalidRequest(f"option {MTU}: {mtu} is out of range {low}-{MAX_MTU}{why}")
    return mtu


def _parse_host_binding(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InvalidRequest(f"option {HOST_BINDING}: {value!r} is not an IPv4 address") from None


def _parse_mode(value: str) -> Mode:
    if value == "bridge" or value == "macvlan":
        return value
    raise InvalidRequest(f"option {MODE}: unknown mode {value!r} (expected bridge or macvlan)")


def _parse_macvlan_mode(value: str) -> MacvlanMode:
    if value in ("bridge", "private", "vepa", "passthru"):
        return value  # type: ignore[return-value]
    raise InvalidRequest(
        f"option {MACVLAN_MODE}: unknown mode {value!r} (expected bridge, private, vepa or passthru)"
    )


def _check_prefix(value: str) -> str:
    if not _PREFIX_RE.match(value):
        raise InvalidRequest(
            f"option {IFACE_PREFIX}: {value!r} is not a valid prefix (1-8 letters or digits, starting with a letter)"
        )
    return value


def parse_options(generic: Mapping[str, Any], *, internal: bool, enable_ipv6: bool) -> NetworkConfig:
    for key, value in generic.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"option {key}: value must be a string, got {type(value).__name__}")
    opts: Mapping[str, str] = generic
    for key in opts:
        if key not in KNOWN_KEYS and not key.startswith(_IGNORED_PREFIXES):
            log.warning("ignoring unknown network option %r", key)
    cfg = NetworkConfig(internal=internal, enable_ipv6=enable_ipv6)
    if MODE in opts:
        cfg.mode = _parse_mode(opts[MODE])
    if BRIDGE_NAME in opts:
        cfg.bridge_name = check_ifname(BRIDGE_NAME, opts[BRIDGE_NAME])
    if MTU in opts:
        cfg.mtu = parse_mtu(opts[MTU], enable_ipv6)
    if ENABLE_ICC in opts:
        cfg.icc = parse_bool(ENABLE_ICC, opts[ENABLE_ICC])
    if ENABLE_MASQ in opts:
        cfg.masquerade = parse_bool(ENABLE_MASQ, opts[ENABLE_MASQ])
    if HOST_BINDING in opts:
        cfg.host_binding_ipv4 = _parse_host_binding(opts[HOST_BINDING])
    if IFACE_PREFIX in opts:
        cfg.iface_prefix = _check_prefix(opts[IFACE_PREFIX])
    if PARENT in opts:
        cfg.parent = check_ifname(PARENT, opts[PARENT])
    if MACVLAN_MODE in opts:
        cfg.macvlan_mode = _parse_macvlan_mode(opts[MACVLAN_MODE])
    _check_mode_keys(cfg, opts)
    return cfg


def _check_mode_keys(cfg: NetworkConfig, opts: Mapping[str, str]) -> None:
    if cfg.mode == "bridge":
        for key in (PARENT, MACVLAN_MODE):
            if key in opts:
                raise InvalidRequest(f"option {key}: only valid with -o mode=macvlan")
    else:
        for key in (BRIDGE_NAME, ENABLE_ICC, ENABLE_MASQ, HOST_BINDING):
            if key in opts:
                raise InvalidRequest(f"option {key}: only valid with -o mode=bridge")
