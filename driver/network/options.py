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
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel

from driver.errors import InvalidRequest

log = logging.getLogger(__name__)

Mode = Literal["bridge", "macvlan", "overlay"]
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
OVERLAY = "overlay"
VNI = "vni"
# Docker's own overlay driver takes the VNI under this name (a list; one network, one VNI here).
VNI_DOCKER = "com.docker.network.driver.overlay.vxlanid_list"

# Keys dockerd itself puts into the generic map (daemon default-network-opts and the like).
_IGNORED_PREFIXES = ("com.docker.network.",)

# Linux accepts almost any byte in an interface name; we accept the portable subset, which
# keeps names safe to use in /proc/sys paths and iptables arguments.
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,7}$")
# The overlay's cluster-wide identity: also a path segment of its etcd keys.
OVERLAY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_VNI = (1 << 24) - 1
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}

MIN_MTU, MAX_MTU, MIN_MTU_V6 = 68, 65535, 1280
# Far beyond any real option (the longest, an overlay name, is 63 characters); a bigger
# one is a mistake or an attack, and would be stored, logged and echoed back.
MAX_OPTION_KEY, MAX_OPTION_VALUE = 256, 4096


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
    overlay: str | None = None
    vni: int | None = None


def check_sizes(prefix: str, opts: Mapping[str, Any]) -> None:
    """Refuse a key or string value too long to be an option's, naming the key."""
    for key, value in opts.items():
        if len(key) > MAX_OPTION_KEY:
            raise InvalidRequest(
                f"{prefix}{key[:64]}...: key of {len(key)} characters (keys are at most {MAX_OPTION_KEY})"
            )
        if isinstance(value, str) and len(value) > MAX_OPTION_VALUE:
            raise InvalidRequest(
                f"{prefix}{key}: value of {len(value)} characters (values are at most {MAX_OPTION_VALUE})"
            )


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


def parse_mtu(key: str, value: str, enable_ipv6: bool = False) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"option {key}: {value!r} is not an integer")
    mtu = int(value)
    low = MIN_MTU_V6 if enable_ipv6 else MIN_MTU
    if not low <= mtu <= MAX_MTU:
        why = " (IPv6 needs at least 1280)" if enable_ipv6 else ""
        raise InvalidRequest(f"option {key}: {mtu} is out of range {low}-{MAX_MTU}{why}")
    return mtu


def _ipv4(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InvalidRequest(f"option {key}: {value!r} is not an IPv4 address") from None


def _one_of(*allowed: str) -> Callable[[str, str], str]:
    def check(key: str, value: str) -> str:
        if value not in allowed:
            raise InvalidRequest(f"option {key}: unknown mode {value!r} (expected {', '.join(allowed)})")
        return value

    return check


def _prefix(key: str, value: str) -> str:
    if not _PREFIX_RE.match(value):
        raise InvalidRequest(
            f"option {key}: {value!r} is not a valid prefix (1-8 letters or digits, starting with a letter)"
        )
    return value


def _overlay_name(key: str, value: str) -> str:
    if not OVERLAY_NAME_RE.match(value):
        raise InvalidRequest(
            f"option {key}: {value!r} is not a valid overlay name "
            "(1-63 characters: letters, digits, '_', '.', '-'; starting with a letter or digit)"
        )
    return value


def parse_vni(key: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"option {key}: {value!r} is not a VXLAN id (an integer 1-{MAX_VNI})")
    vni = int(value)
    if not 1 <= vni <= MAX_VNI:
        raise InvalidRequest(f"option {key}: VXLAN id {vni} is out of range 1-{MAX_VNI}")
    return vni


# key → (NetworkConfig field, parser of the string value)
_PARSERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    MODE: ("mode", _one_of("bridge", "macvlan", "overlay")),
    BRIDGE_NAME: ("bridge_name", check_ifname),
    MTU: ("mtu", parse_mtu),
    ENABLE_ICC: ("icc", parse_bool),
    ENABLE_MASQ: ("masquerade", parse_bool),
    HOST_BINDING: ("host_binding_ipv4", _ipv4),
    IFACE_PREFIX: ("iface_prefix", _prefix),
    PARENT: ("parent", check_ifname),
    MACVLAN_MODE: ("macvlan_mode", _one_of("bridge", "private", "vepa", "passthru")),
    OVERLAY: ("overlay", _overlay_name),
    VNI: ("vni", parse_vni),
}

# The keys each mode takes, beyond those every mode takes (MODE, MTU, IFACE_PREFIX).
_MODE_KEYS: dict[str, tuple[str, ...]] = {
    "bridge": (BRIDGE_NAME, ENABLE_ICC, ENABLE_MASQ, HOST_BINDING),
    "macvlan": (PARENT, MACVLAN_MODE),
    "overlay": (OVERLAY, VNI, VNI_DOCKER, ENABLE_ICC, ENABLE_MASQ, HOST_BINDING),
}


def parse_options(generic: Mapping[str, Any], *, internal: bool, enable_ipv6: bool) -> NetworkConfig:
    check_sizes("option ", generic)
    for key, value in generic.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"option {key}: value must be a string, got {type(value).__name__}")
        if key not in _PARSERS and key != VNI_DOCKER and not key.startswith(_IGNORED_PREFIXES):
            log.warning("ignoring unknown network option %r", key)
    values = {field: parse(key, generic[key]) for key, (field, parse) in _PARSERS.items() if key in generic}
    if MTU in generic:
        values["mtu"] = parse_mtu(MTU, generic[MTU], enable_ipv6)
    if VNI_DOCKER in generic:
        values["vni"] = _docker_vni(generic)
    cfg = NetworkConfig(internal=internal, enable_ipv6=enable_ipv6, **values)
    _check_mode_keys(cfg, generic)
    if cfg.mode == "overlay" and cfg.overlay is None:
        raise InvalidRequest(
            f"option {OVERLAY}: an overlay network needs its cluster-wide name, e.g. -o {OVERLAY}=app "
            "(the same on every host that joins it)"
        )
    return cfg


def _docker_vni(generic: Mapping[str, Any]) -> int:
    ids = [v.strip() for v in generic[VNI_DOCKER].split(",") if v.strip()]
    if len(ids) != 1:
        raise InvalidRequest(f"option {VNI_DOCKER}: give exactly one VXLAN id (pyoverlay overlays have one subnet VNI)")
    vni = parse_vni(VNI_DOCKER, ids[0])
    if VNI in generic and parse_vni(VNI, generic[VNI]) != vni:
        raise InvalidRequest(f"option {VNI}: {generic[VNI]} contradicts {VNI_DOCKER}={vni}")
    return vni


def _check_mode_keys(cfg: NetworkConfig, opts: Mapping[str, Any]) -> None:
    for key in {k for keys in _MODE_KEYS.values() for k in keys}:
        if key in opts and key not in _MODE_KEYS[cfg.mode]:
            others = [m for m, ks in _MODE_KEYS.items() if key in ks]
            raise InvalidRequest(f"option {key}: only valid with -o mode={' or mode='.join(others)}")
