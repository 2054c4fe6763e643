"""Several Docker hosts on one underlay, an etcd cluster and an "outside" host (LAB §2, §9, §11).

    underlay netns `ul`: bridge br0 10.99.0.1/24 (MTU 1400 on the bridge and every port)
      ├─ h1 … hN   Engine netns, ul0 = 10.99.0.1N/24, default route via .1, a DriverProcess each
      ├─ e1 … e3   etcd members, 10.99.0.21-23 (tests/lab/etcd.py EtcdCluster)
      └─ out       10.99.0.100, the "internet": egress (masquerade) and `-p` tests talk to it

Nothing routes beyond the underlay: `ul` and `out` have forwarding off (a new netns's
default) and no other links, so whatever a host sends to its default route dies there.

`build_hand_vxlan` is the hand-built VXLAN (no pyoverlay) that the smoke tests and the
benchmark baseline share.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .driver import DriverProcess, driver_available
from .engine import Engine
from .etcd import EtcdCluster
from .inspection import Link, links, mounts_under, netns_list
from .lab import Lab, LabSession, _step
from .netns import Netns, link_veth
from .proc import LabError, log, pids_alive, process_start_time, run

UNDERLAY = ipaddress.ip_network("10.99.0.0/24")
UNDERLAY_MTU = 1400
UNDERLAY_BRIDGE = "br0"
UNDERLAY_IF = "ul0"  # the underlay link's name inside every attached netns
ROUTER_IP = str(UNDERLAY[1])
OUTSIDE_IP = str(UNDERLAY[100])
# Real clusters upgrade one host at a time: the default lab mixes engine versions.
DEFAULT_KINDS = ("20.10", "28.5", "20.10")
ETCD_MEMBERS = 3
MAX_HOSTS = 9  # host addresses are 10.99.0.1N

DriverArgs = Mapping[str, Sequence[str]] | Callable[["HostNode"], Sequence[str]] | None

_labels = itertools.count(1)


def host_ip(i: int) -> str:
    """Underlay address of host `i` (1-based): 10.99.0.1i."""
    return str(UNDERLAY[10 + i])


def etcd_ip(i: int) -> str:
    """Underlay address of etcd member `i` (1-based): 10.99.0.2i."""
    return str(UNDERLAY[20 + i])


# ------------------------------------------------------------------ DF ping
# busybox ping cannot set DF (no `-M do`) and iputils is not installed, so a raw ICMP socket
# with IP_PMTUDISC_DO stands in: exit 0 on a reply, 1 on timeout, 2 when the kernel refuses
# the size locally (EMSGSIZE).
_DF_PING = r"""
import os, socket, struct, sys, time
dst, size, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF set, no local fragmenting
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
payload = bytes(i & 0xFF for i in range(size))
pkt = struct.pack("!BBHHH", 8, 0, csum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload), ident, 1) + payload
try:
    s.sendto(pkt, (dst, 0))
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
deadline = time.monotonic() + timeout
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        break
    ihl = (data[0] & 0xF) * 4
    typ, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    if typ == 0 and rid == ident and addr[0] == dst and len(data) - ihl - 8 == size:
        sys.exit(0)
sys.exit(1)
"""


def df_ping(ns_path: str | os.PathLike[str], dst: str, size: int, timeout: float = 1.0) -> int:
    """One ICMP echo with DF set and `size` payload bytes (like `ping -M do -s SIZE`) from netns `ns_path`.

    Returns 0 (reply), 1 (no reply) or 2 (larger than the local MTU). Works for a
    container's netns too (`/proc/PID/ns/net`): it runs in the host mount namespace.
    """
    argv = ["nsenter", f"--net={ns_path}", sys.executable, "-c", _DF_PING, dst, str(size), str(timeout)]
    return run(argv, check=False, timeout=timeout + 30).returncode


# ------------------------------------------------------------------ kernel inspection
def bridge_json(ns: Netns, *args: str) -> list[dict[str, Any]]:
    """`bridge -j ARGS` in `ns` (via nsenter: the host's `bridge` in the netns)."""
    out = ns.run("bridge", "-j", *args).stdout.strip()
    return json.loads(out) if out else []


def fdb_entries(ns: Netns, dev: str) -> list[dict[str, Any]]:
    """Raw `bridge fdb show dev DEV` rows (both `self` rows with `dst` and bridge `master` rows)."""
    return bridge_json(ns, "fdb", "show", "dev", dev)


def fdb_map(ns: Netns, dev: str) -> dict[str, str]:
    """MAC → remote VTEP for the rows of DEV that carry a `dst` (vxlan `self` rows)."""
    return {e["mac"]: e["dst"] for e in fdb_entries(ns, dev) if "dst" in e}


def neigh_map(ns: Netns, dev: str) -> dict[str, str]:
    """IP → MAC of the neighbour rows on DEV that have a link-layer address."""
    return {e["dst"]: e["lladdr"] for e in ns.ip_json("neigh", "show", "dev", dev) if "lladdr" in e}


def link_details(ns: Netns, name: str) -> dict[str, Any]:
    """`ip -d -j link show NAME` (mtu, address, linkinfo with the vxlan id/port/flags, …)."""
    rows = ns.ip_json("-d", "link", "show", name)
    if not rows:
        raise LabError(f"no link {name} in {ns.name}")
    return rows[0]


# ------------------------------------------------------------------ hosts
@dataclass
class HostNode:
    """One Docker host of a MultiHost: its engine, driver and underlay attachment."""

    name: str
    index: int
    kind: str
    ip: str
    engine: Engine
    driver: DriverProcess | None
    underlay: Netns
    port: str  # this host's port on the underlay bridge (in `underlay`)
    etcd_endpoints: str = ""  # comma-joined client URLs, for driver flags

    @property
    def netns(self) -> Netns:
        return self.engine.netns

    def __repr__(self) -> str:
        return f"HostNode({self.name!r}, {self.kind!r}, {self.ip})"

    # ------------------------------------------------------------- docker
    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this host's engine (see Engine.cli for `check`, `client`, `timeout`)."""
        return self.engine.cli(*args, **kwargs)

    def run_container(self, name: str, *args: str, cmd: Sequence[str] = ("sleep", "3600")) -> str:
        """`docker run -d --name NAME ARGS bb CMD` (e.g. `"--network", "ov1", "--ip", ...`); returns NAME."""
        self.cli("run", "-d", "--name", name, *args, "bb", *cmd)
        return name

    def exec(self, container: str, *cmd: str, check: bool = True, timeout: float = 60.0) -> str:
        """`docker exec CONTAINER CMD...`; returns stdout."""
        return self.engine.cli("exec", container, *cmd, check=check, timeout=timeout).stdout

    def sh(self, container: str, script: str, check: bool = True) -> str:
        return self.exec(container, "sh", "-c", script, check=check)

    def ping(self, container: str, ip: str, count: int = 1, timeout: float = 1) -> bool:
        """busybox ping from inside the container; True when a reply came."""
        args = ["exec", container, "ping", "-c", str(count), "-W", str(max(1, round(timeout))), ip]
        return self.engine.cli(*args, check=False, timeout=timeout * count + 30).returncode == 0

    def _endpoint(self, container: str, network: str | None) -> dict[str, Any]:
        nets: dict[str, Any] = json.loads(
            self.cli("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
        )
        if network is None:
            if len(nets) != 1:
                raise LabError(f"{container} is on {sorted(nets)}: name the network")
            return next(iter(nets.values()))
        return nets[network]

    def container_ip(self, container: str, network: str | None = None) -> str:
        """IPv4 address Docker reports for the container on `network` (the only one when None)."""
        return str(self._endpoint(container, network)["IPAddress"])

    def container_mac(self, container: str, network: str | None = None) -> str:
        return str(self._endpoint(container, network)["MacAddress"])

    def container_iface(self, container: str, ifname: str = "eth0") -> dict[str, Any]:
        """What the kernel says about the container's `ifname`: {"mac", "mtu", "ipv4": [cidr...]}."""
        ns = self.engine.container_netns(container)
        row = json.loads(run(["nsenter", f"--net={ns}", "ip", "-j", "addr", "show", ifname]).stdout)[0]
        v4 = [f"{a['local']}/{a['prefixlen']}" for a in row.get("addr_info", []) if a.get("family") == "inet"]
        return {"mac": row.get("address"), "mtu": row.get("mtu"), "ipv4": v4}

    def df_ping_from(self, container: str, ip: str, size: int, timeout: float = 1.0) -> int:
        """`ping -M do -s SIZE` from the container's netns (0 reply, 1 none, 2 too big locally)."""
        return df_ping(self.engine.container_netns(container), ip, size, timeout)

    # ------------------------------------------------------------- kernel, host netns
    def df_ping(self, ip: str, size: int, timeout: float = 1.0) -> int:
        """`ping -M do -s SIZE` from the host netns (0 reply, 1 none, 2 too big locally)."""
        return df_ping(self.netns.path, ip, size, timeout)

    def fdb(self, dev: str) -> dict[str, str]:
        """`bridge fdb show dev DEV` in the host netns: MAC → dst (rows with a dst)."""
        return fdb_map(self.netns, dev)

    def fdb_entries(self, dev: str) -> list[dict[str, Any]]:
        return fdb_entries(self.netns, dev)

    def neigh(self, dev: str) -> dict[str, str]:
        """`ip neigh show dev DEV` in the host netns: IP → MAC."""
        return neigh_map(self.netns, dev)

    def links(self) -> list[Link]:
        return links(self.netns)

    def link(self, name: str) -> dict[str, Any]:
        return link_details(self.netns, name)

    # ------------------------------------------------------------- failures
    def start_driver(self, args: Sequence[str] | None = None) -> DriverProcess:
        """Start the driver (again); `args` replaces its extra arguments when given."""
        drv = self._driver()
        if args is not None:
            drv.extra_args = list(args)
        return drv.start()

    def restart_driver(self, args: Sequence[str] | None = None) -> DriverProcess:
        self.stop_driver()
        return self.start_driver(args)

    def stop_driver(self) -> int | None:
        """SIGTERM (SIGKILL after 10 s); returns the exit code."""
        return self._driver().stop()

    def kill_driver(self) -> None:
        """kill -9, as a crash would (the socket file stays)."""
        self._driver().kill9()

    def stop_engine(self) -> int | None:
        return self.engine.stop()

    def start_engine(self) -> Engine:
        return self.engine.start()

    def cut(self, silent: bool = False) -> None:
        """Take the host off the underlay.

        Default: its bridge port goes down, so ul0 loses carrier (a pulled cable).
        `silent`: the port stops forwarding but ul0 stays up (a partition the host
        cannot see; connections time out instead of failing).
        """
        if silent:
            self.underlay.run("bridge", "link", "set", "dev", self.port, "state", "0")
        else:
            self.underlay.ip("link", "set", self.port, "down")

    def reconnect(self) -> None:
        """Undo `cut` (either kind)."""
        self.underlay.ip("link", "set", self.port, "up")
        self.underlay.run("bridge", "link", "set", "dev", self.port, "state", "3")

    def _driver(self) -> DriverProcess:
        if self.driver is None:
            raise LabError(f"{self.name} runs without a driver")
        return self.driver


def overlay_driver_args(host: HostNode, *, host_ttl: int = 5, extra: Sequence[str] = ()) -> list[str]:
    """The planned overlay flags for `host` (pass as `driver_args=`): etcd store, advertise address, TTL."""
    return [
        *("--store", "etcd"),
        *("--etcd-endpoints", host.etcd_endpoints),
        *("--advertise-addr", host.ip),
        *("--host-ttl", str(host_ttl)),
        *extra,
    ]


# ------------------------------------------------------------------ the lab
class MultiHostLab(Lab):
    """A Lab that also owns an etcd cluster: stopped after the drivers, before the netns (LAB §15).

    Its PIDs count as recorded, so `LabSession.leftovers()` and the Lab's own
    "still alive" check cover etcd too.
    """

    def __init__(self, session: LabSession, label: str) -> None:
        super().__init__(session, label)
        self.etcd: EtcdCluster | None = None
        # EtcdCluster forgets a member's PID once it is reaped: remember the ones we saw,
        # with their start time so that a reused PID is never taken for ours.
        self._etcd_seen: dict[int, int | None] = {}

    def etcd_pids(self) -> list[int]:
        """PIDs of the etcd members seen so far that are gone or still the same process."""
        if self.etcd is not None:
            for m in self.etcd.members:
                if m.pid is not None:
                    self._etcd_seen.setdefault(m.pid, process_start_time(m.pid))
        return sorted(p for p, t in self._etcd_seen.items() if process_start_time(p) in (None, t))

    def recorded_pids(self) -> list[int]:
        return super().recorded_pids() + self.etcd_pids()

    def _stop_processes(self, errors: list[str]) -> None:
        # Engines in parallel: each remove_objects + SIGTERM wait takes ~1-2 s.
        def stop_engine(e: Engine) -> None:
            _step(errors, f"remove objects on {e.name}", e.remove_objects)
            _step(errors, f"stop engine {e.name}", e.stop)

        with ThreadPoolExecutor(max(1, len(self.engines), len(self.drivers))) as pool:
            list(pool.map(stop_engine, self.engines))
            # Engines before drivers: stopping dockerd still sends Leave/DeleteEndpoint.
            list(pool.map(lambda d: _step(errors, f"stop driver {d.name}", d.stop), self.drivers))
        if self.etcd is not None:
            self.etcd_pids()  # remember the members' PIDs before EtcdCluster forgets them
            _step(errors, "stop etcd", self.etcd.teardown)
        for e in self.engines:
            _step(errors, f"cgroups of {e.name}", e.cleanup_cgroups)


@dataclass
class MultiHost:
    """N Docker hosts + 3 etcd members + an outside host on one underlay; see the module docstring.

    `start()` builds it; `teardown()` (idempotent) removes everything.
    """

    session: LabSession
    kinds: Sequence[str] = DEFAULT_KINDS
    driver_args: DriverArgs = None
    with_driver: bool = True
    live_restore: bool = False
    engine_args: Sequence[str] = ()
    daemon_config: dict[str, Any] | None = None
    lab: MultiHostLab = field(init=False)
    underlay: Netns = field(init=False)  # holds bridge br0 and the router address .1
    outside: Netns = field(init=False)  # 10.99.0.100, routes nowhere
    hosts: list[HostNode] = field(init=False, default_factory=list)
    timings: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= len(self.kinds) <= MAX_HOSTS:
            raise ValueError(f"1..{MAX_HOSTS} hosts, not {len(self.kinds)}")
        if self.with_driver and not driver_available():
            raise LabError("driver/cli.py does not exist")
        self.lab = MultiHostLab(self.session, f"mh{next(_labels)}")
        self.session.labs.append(self.lab)

    # ------------------------------------------------------------- access
    def __getitem__(self, key: int | str) -> HostNode:
        """`mh[0]` or `mh["h1"]`."""
        if isinstance(key, int):
            return self.hosts[key]
        for h in self.hosts:
            if h.name == key:
                return h
        raise KeyError(key)

    def __iter__(self) -> Iterator[HostNode]:
        return iter(self.hosts)

    @property
    def etcd(self) -> EtcdCluster:
        if self.lab.etcd is None:
            raise LabError("etcd not started")
        return self.lab.etcd

    @property
    def etcd_endpoints(self) -> str:
        return ",".join(self.etcd.endpoints)

    def etcdctl(self, *args: str, ns: Netns | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`etcdctl --endpoints=<all members> ARGS` in `ns` (default: h1's netns)."""
        where = ns or self.hosts[0].netns
        return where.run("etcdctl", f"--endpoints={self.etcd_endpoints}", *args, check=check, timeout=30)

    # ------------------------------------------------------------- build
    def start(self) -> MultiHost:
        t0 = time.monotonic()
        self.underlay = self.lab.netns("ul")
        self.underlay.ip("link", "add", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge")
        self.underlay.addr_add(UNDERLAY_BRIDGE, f"{ROUTER_IP}/{UNDERLAY.prefixlen}")
        self.underlay.set_up(UNDERLAY_BRIDGE)
        self.outside = self.lab.netns("out")
        self.attach(self.outside, "p-out", OUTSIDE_IP, default_route=False)
        members = []
        for i in range(1, ETCD_MEMBERS + 1):
            ns = self.lab.netns(f"e{i}")
            self.attach(ns, f"p-e{i}", etcd_ip(i), default_route=False)
            members.append((ns, etcd_ip(i)))
        self.lab.etcd = EtcdCluster(members, self.lab.dir / "etcd")
        self._make_hosts()
        self.timings["underlay"] = round(time.monotonic() - t0, 2)

        t1 = time.monotonic()
        with ThreadPoolExecutor(len(self.hosts) + 1) as pool:
            etcd_up = pool.submit(self._start_etcd)
            # The drivers may need the store at start: hosts wait for etcd, engines still start in parallel.
            jobs = [pool.submit(self._start_host, h, etcd_up) for h in self.hosts]
            for job in [etcd_up, *jobs]:
                job.result()
        self.lab.etcd_pids()
        self.timings["start"] = round(time.monotonic() - t1, 2)
        self.timings["total"] = round(time.monotonic() - t0, 2)
        log.info("multihost %s up in %.2fs: %s", self.lab.label, self.timings["total"], self.timings)
        return self

    def attach(self, ns: Netns, port: str, ip: str, *, ifname: str = UNDERLAY_IF, default_route: bool = True) -> None:
        """Plug `ns` into the underlay bridge: `ns:ifname` = `ip`/24, MTU 1400 on both ends."""
        link_veth(self.underlay, port, ns, ifname, None, f"{ip}/{UNDERLAY.prefixlen}", mtu=UNDERLAY_MTU)
        self.underlay.ip("link", "set", port, "master", UNDERLAY_BRIDGE)
        if default_route:
            ns.ip("route", "add", "default", "via", ROUTER_IP)

    def _make_hosts(self) -> None:
        endpoints = ",".join(self.lab.etcd.endpoints) if self.lab.etcd else ""
        for i, kind in enumerate(self.kinds, 1):
            name = f"h{i}"
            eng = self.lab.engine(
                kind,
                name,
                live_restore=self.live_restore,
                extra_args=self.engine_args,
                daemon_config=self.daemon_config,
            )
            self.attach(eng.netns, f"p-{name}", host_ip(i))
            host = HostNode(name, i, kind, host_ip(i), eng, None, self.underlay, f"p-{name}", endpoints)
            if self.with_driver:
                host.driver = self.lab.driver(eng, extra_args=self._args_for(host))
            self.hosts.append(host)

    def _args_for(self, host: HostNode) -> list[str]:
        if self.driver_args is None:
            return []
        if callable(self.driver_args):
            return list(self.driver_args(host))
        return list(self.driver_args.get(host.name, ()))

    def _start_etcd(self) -> None:
        t0 = time.monotonic()
        self.etcd.start_all()
        self.timings["etcd"] = round(time.monotonic() - t0, 2)

    @staticmethod
    def _start_host(host: HostNode, etcd_up: Any) -> None:
        etcd_up.result()
        # Driver first: a missing legacy plugin costs dockerd 15 s per lookup.
        if host.driver is not None:
            host.driver.start()
        host.engine.start()

    def clean(self) -> None:
        """Containers, networks, volumes removed on every host (engines stay up), in parallel."""
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            list(pool.map(lambda h: h.engine.remove_objects(), self.hosts))

    # ------------------------------------------------------------- teardown
    def teardown(self) -> list[str]:
        t0 = time.monotonic()
        # A host a test left cut off would make its driver's and engine's goodbyes time out.
        for h in self.hosts:
            with contextlib.suppress(LabError):
                if self.underlay.exists():
                    h.reconnect()
        errors = self.lab.teardown()
        self.timings.setdefault("teardown", round(time.monotonic() - t0, 2))
        return errors

    def leftovers(self) -> dict[str, list[Any]]:
        """What of this lab still exists; all lists empty once torn down."""
        return {
            "netns": netns_list(self.lab.ns_name("")),
            "mounts": mounts_under(self.lab.dir),
            "pids": pids_alive(self.lab.recorded_pids()),
            "cgroups": [str(d) for h in self.hosts for d in h.engine.cgroup_dirs()],
        }

    def log_tails(self, lines: int = 30) -> list[tuple[str, str]]:
        """(title, tail) of every dockerd, driver and etcd log: for failure reports."""
        from .proc import tail

        out = []
        for h in self.hosts:
            out.append((f"{h.name} dockerd {h.kind} log tail", tail(h.engine.log_path, lines)))
            if h.driver is not None:
                out.append((f"{h.name} driver log tail", tail(h.driver.log_path, lines)))
        for p in sorted((self.lab.dir / "etcd").glob("*.log")):
            out.append((f"etcd {p.stem} log tail", tail(p, lines)))
        return out


# ------------------------------------------------------------------ hand-built VXLAN
@dataclass(frozen=True)
class VxlanEnd:
    """One end of a hand-built VXLAN: the VTEP netns (UDP socket), the sandbox with the bridge, a container."""

    vtep: Netns
    underlay_ip: str
    sandbox: Netns
    container: Netns
    ip: str
    mac: str


@dataclass
class HandVxlan:
    """A static VXLAN built with `ip`/`bridge` only (moby-overlay style); `remove()` undoes it all."""

    vni: int
    port: int
    mtu: int
    device: str
    ends: list[VxlanEnd] = field(default_factory=list)

    def __enter__(self) -> HandVxlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def ping(self, src: int, dst: int, size: int | None = None, timeout: float = 1.0) -> int:
        """DF ping from end `src`'s container to end `dst`'s (0 reply, 1 none, 2 too big)."""
        payload = 56 if size is None else size
        return df_ping(self.ends[src].container.path, self.ends[dst].ip, payload, timeout)

    def remove(self) -> None:
        """Containers and sandboxes go (with the moved vxlan devices and the bridges)."""
        for end in self.ends:
            with contextlib.suppress(LabError):
                if end.sandbox.exists():
                    end.sandbox.ip("link", "del", self.device, check=False)
            end.container.delete()
            end.sandbox.delete()
            # Only left in the VTEP netns if the build failed before moving it.
            end.vtep.ip("link", "del", self.device, check=False)


def _mac_for(ip: str) -> str:
    """02:42 + the IPv4 bytes, as moby's overlay derives endpoint MACs."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def build_hand_vxlan(
    lab: Lab,
    vteps: Sequence[tuple[Netns, str]],
    *,
    vni: int = 4242,
    port: int = 4789,
    mtu: int = UNDERLAY_MTU - 50,
    subnet: str = "10.242.0.0/24",
    tag: str = "hv",
) -> HandVxlan:
    """A VXLAN between `vteps` ((netns, underlay IP) pairs) with one veth "container" per VTEP.

    Per VTEP: `vx<vni>` (id, dstport, local, nolearning, proxy) is created in the VTEP
    netns, so its UDP socket lives there, then moved into a sandbox netns holding bridge
    br0 (moby's overlay layout); the container netns `eth0` (subnet .1i, MAC from its IP)
    is a veth into br0. Every VTEP gets a static FDB row MAC → remote VTEP and a
    permanent neighbour IP → MAC (answered by the vxlan proxy) for each remote container.
    The sandbox keeps the dockerd netns's firewall (FORWARD DROP) out of the path.
    """
    net = ipaddress.ip_network(subnet)
    hv = HandVxlan(vni, port, mtu, f"vx{vni}")
    try:
        for i, (vtep, ul_ip) in enumerate(vteps, 1):
            ip = str(net[10 + i])
            end = VxlanEnd(vtep, ul_ip, lab.netns(f"{tag}{i}s"), lab.netns(f"{tag}{i}c"), ip, _mac_for(ip))
            hv.ends.append(end)  # before plumbing it: a failure below still removes it
            _plumb_end(hv, end, net.prefixlen)
        for end in hv.ends:
            for peer in hv.ends:
                if peer is not end:
                    _program_peer(hv, end, peer)
    except Exception:
        hv.remove()
        raise
    return hv


def _plumb_end(hv: HandVxlan, end: VxlanEnd, prefixlen: int) -> None:
    mtu, sandbox, container = str(hv.mtu), end.sandbox, end.container
    sandbox.ip("link", "add", "br0", "mtu", mtu, "type", "bridge")
    end.vtep.ip("link", "add", hv.device, "mtu", mtu, "type", "vxlan", "id", str(hv.vni), "local", end.underlay_ip,
                "dstport", str(hv.port), "nolearning", "proxy")  # fmt: skip
    end.vtep.ip("link", "set", hv.device, "netns", sandbox.name)
    sandbox.ip("link", "set", hv.device, "master", "br0", "up")
    container.ip("link", "add", "eth0", "address", end.mac, "mtu", mtu, "type", "veth",
                 "peer", "name", "p0", "mtu", mtu, "netns", sandbox.name)  # fmt: skip
    container.addr_add("eth0", f"{end.ip}/{prefixlen}")
    container.set_up("eth0")
    sandbox.ip("link", "set", "p0", "master", "br0", "up")
    sandbox.set_up("br0")


def _program_peer(hv: HandVxlan, end: VxlanEnd, peer: VxlanEnd) -> None:
    end.sandbox.run("bridge", "fdb", "replace", peer.mac, "dev", hv.device, "dst", peer.underlay_ip,
                    "self", "permanent")  # fmt: skip
    end.sandbox.ip("neigh", "replace", peer.ip, "lladdr", peer.mac, "dev", hv.device, "nud", "permanent")
