"""Runtime settings: flags override ``PYOVERLAY_*`` environment variables.

Everything is checked here, at start, so a bad value stops the driver with one line
naming it instead of surfacing at the first request.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from driver.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR

LogLevel = Literal["debug", "info", "warning", "error"]
StoreKind = Literal["local", "etcd"]

DEFAULT_HOST_TTL = 15
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


def parse_endpoints(value: str | list[str]) -> list[str]:
    """``http://a:2379,https://b:2379`` → a list of checked client URLs."""
    items = value.split(",") if isinstance(value, str) else value
    out = []
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        url = urlsplit(raw)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme not in ("http", "https") or not url.hostname or port is None or url.path not in ("", "/"):
            raise ValueError(f"{raw!r} is not an etcd client URL (expected http(s)://HOST:PORT)")
        out.append(f"{url.scheme}://{url.netloc}")
    return out


def parse_hostport(value: str) -> tuple[str, int]:
    """``127.0.0.1:9450`` or ``[::1]:9450`` → (host, port); the host must be an IP address
    (a name could resolve to an address nobody meant to expose)."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535:
        raise ValueError(f"{value!r} is not IP:PORT (e.g. 127.0.0.1:9450 or [::1]:9450)")
    return host, number


def check_pool_spec(spec: str, v6: bool) -> None:
    """``BASE/LEN:SIZE``: pools of /SIZE carved out of BASE/LEN, e.g. ``10.200.0.0/13:24``."""
    base, sep, size = spec.rpartition(":")
    try:
        net = ipaddress.ip_network(base)
    except ValueError:
        example = "fd00::/48:64" if v6 else "10.200.0.0/13:24"
        raise ValueError(f"{spec!r} is not BASE/LEN:SIZE (e.g. {example})") from None
    if not sep or not size.isdigit() or (net.version == 6) != v6:
        raise ValueError(f"{spec!r} is not BASE/LEN:SIZE of IPv{6 if v6 else 4}")
    if not net.prefixlen <= int(size) <= net.max_prefixlen:
        raise ValueError(f"{spec!r}: size /{size} must be between /{net.prefixlen} and /{net.max_prefixlen}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYOVERLAY_", extra="ignore")

    socket: Path = Path(DEFAULT_SOCKET)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    log_level: LogLevel = "info"
    # Pools handed out when a network asks for none (``docker network create`` without
    # ``--subnet`` and ``--ipam-driver pyoverlay``). Kept clear of Docker's own defaults
    # (172.17-31/16, 192.168/16) so both IPAMs can serve one dockerd without overlapping.
    default_pools_v4: list[str] = Field(default_factory=lambda: ["10.200.0.0/13:24"])
    default_pools_v6: list[str] = Field(default_factory=lambda: ["fd70:7079:6f76::/48:64"])
    # Upper bound on one iptables-restore run; a wedged xtables lock must not hang dockerd.
    firewall_timeout: float = Field(10.0, ge=2, le=120)
    # Upper bound on any one call, so dockerd (which has no timeout) always gets an answer.
    request_timeout: float = Field(30.0, ge=1, le=600)
    # Test hook: make the named rollback step fail (see driver.network.steps).
    fail_step: str | None = None
    # The Docker API, read in the background (never in a request) to collect networks
    # and endpoints dockerd has dropped without telling the driver (driver.gc).
    docker_host: str = "unix:///var/run/docker.sock"
    gc_interval: float = Field(60.0, ge=0, le=3600)  # seconds; 0: never compare

    # -- the cluster store (overlay networks) ------------------------------------
    # "local": the embedded store only, all that bridge and macvlan need. "etcd": cluster
    # facts (overlay identities, VNIs, overlay addresses, hosts, remote endpoints) in etcd;
    # what only this host needs stays local either way.
    store: StoreKind = "local"
    etcd_endpoints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    # Several pyoverlay clusters (or other tools) can share one etcd under different prefixes.
    etcd_prefix: str = "/pyoverlay"
    # Every etcd call is bounded by this, so a request that needs the cluster fails
    # within a few seconds (dockerd waits forever on a hung plugin) and never hangs.
    etcd_timeout: float = Field(3.0, gt=0, le=30)
    # The VTEP address other hosts send this host's VXLAN traffic to: an IP of this host
    # or an interface name; default the source address of the default route.
    advertise_addr: str | None = None
    # The host's lease: a host that stops renewing it (dead, cut off) disappears from its
    # peers' data planes this long after its last renewal. 15 s rides out an etcd leader
    # election (1-3 s) many times over without keeping a dead host's endpoints for long.
    host_ttl: int = Field(DEFAULT_HOST_TTL, ge=3, le=3600)
    # 4789 is IANA's VXLAN port and Docker's overlay default; pyoverlay's VNIs stay below
    # swarm's range (4096 and up), so both can share the port on one host.
    vxlan_port: int = Field(4789, ge=1, le=65535)
    # How often each host re-reads the cluster and re-checks its kernel entries and its
    # own records in etcd, repairing whatever a missed event or a failed write left.
    resync_interval: float = Field(30.0, ge=1, le=3600)
    # A member of an overlay whose host record (leased, --host-ttl) has been gone this
    # long is forgotten by the hosts still in it: its address claims and blocks go back
    # to the pool. An hour outlasts any reboot or partition worth waiting for; 0: never.
    forget_host_after: float = Field(3600.0, ge=0, le=30 * 86400)

    # -- metrics (off unless one is given) ------------------------------------------
    # A Unix socket of its own (0600, like the driver's) and/or HOST:PORT for TCP; a
    # scraper never gets the driver's socket, which can create networks.
    metrics_socket: Path | None = None
    metrics_addr: str | None = None

    # -- firewall --------------------------------------------------------------------
    # The iptables backend dockerd uses is found by reading both (driver.firewall.backend);
    # "nft" or "legacy" skips the detection.
    firewall_backend: Literal["auto", "nft", "legacy"] = "auto"
    # How often the rules are compared with what was applied, and restored when someone
    # else flushed or rewrote them (driver.firewall.watch); 0: never.
    firewall_check_interval: float = Field(2.0, ge=0, le=300)

    @field_validator("firewall_backend", mode="before")
    @classmethod
    def _backend_default(cls, value: Any) -> Any:
        return "auto" if value == "" else value  # a managed plugin's unset env is ""

    @field_validator("etcd_ca", "etcd_cert", "etcd_key", "advertise_addr", "fail_step", "metrics_socket",
                     "metrics_addr", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # A managed plugin's env variables are set, if only to "", whether or not the
        # user gave them.
        return None if value == "" else value

    @field_validator("default_pools_v4", "default_pools_v6")
    @classmethod
    def _pool_specs(cls, specs: list[str], info: ValidationInfo) -> list[str]:
        v6 = info.field_name == "default_pools_v6"
        for spec in specs:
            check_pool_spec(spec, v6)
        return specs

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> list[str]:
        if not isinstance(value, str | list):
            raise ValueError("must be a comma-separated list of URLs")
        return parse_endpoints(value)

    @field_validator("metrics_addr")
    @classmethod
    def _metrics_addr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = parse_hostport(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @field_validator("etcd_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX_RE.match(value):
            raise ValueError(f"{value!r} must look like /name[/name...] (letters, digits, '.', '_', '-')")
        return value

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if self.store == "etcd" and not self.etcd_endpoints:
            raise ValueError("store etcd needs etcd endpoints (--etcd-endpoints http://HOST:2379[,...])")
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise ValueError("etcd TLS needs both a client certificate and its key (--etcd-cert, --etcd-key)")
        for path in (self.etcd_ca, self.etcd_cert, self.etcd_key):
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"cannot read etcd TLS file {path}")
        return self


class SettingsError(Exception):
    """A bad flag or environment value, as one line naming it."""


def load_settings(overrides: dict[str, Any]) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = f"--{field.replace('_', '-')} (PYOVERLAY_{field.upper()})" if field else "settings"
            problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        raise SettingsError("; ".join(problems)) from None
