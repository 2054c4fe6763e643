"""The bench's own lab: one dockerd and the driver (from `tests.lab`), its networks and helper processes.

Everything is created inside the lab's namespaces and torn down by PID at the end; the
host's interfaces, routes and firewall are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.lab import (
    DriverProcess,
    Engine,
    Lab,
    LabSession,
    Lan,
    Netns,
    Outside,
    add_bridge,
    link_veth,
    pid_alive,
    wait_pids,
)

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parents[1]
DRIVER_ENV = "PYOVERLAY_E2E_DRIVER"  # tests.lab's override of the driver command, honoured as is

# The LAN behind the engine's macvlan parent `lan0` (tests.lab's topology): router .1, LAN host .10,
# containers from LAN_RANGE, hand-built macvlan namespaces at .20 and .21.
LAN_SUBNET = ipaddress.ip_network("198.51.100.0/24")
LAN_RANGE = "198.51.100.128/25"
LAN_PARENT = "lan0"
MACVLAN_NET = "bench-mv"

# docker network name -> `docker network create` arguments. One subnet each, all /24 or
# larger, MTU 1500 everywhere (Docker's and pyoverlay's default), Docker's IPAM unless named.
NETWORKS: dict[str, list[str]] = {
    "bench-po": ["-d", "pyoverlay", "--subnet", "10.60.0.0/24"],
    "bench-br": ["-d", "bridge", "--subnet", "10.61.0.0/24"],
    "bench-poipam": ["-d", "pyoverlay", "--ipam-driver", "pyoverlay", "--subnet", "10.62.0.0/24"],
    "bench-rss": ["-d", "pyoverlay", "--subnet", "10.64.0.0/22"],
    MACVLAN_NET: [  # on the LAN (Bench.lan(), created with it)
        "-d", "pyoverlay", "-o", "mode=macvlan", "-o", f"parent={LAN_PARENT}", "-o", "macvlan_mode=bridge",
        "--subnet", str(LAN_SUBNET), "--ip-range", LAN_RANGE, "--gateway", str(LAN_SUBNET[1]),
    ],
}
HANDBUILT_SUBNET = "10.65.0"


@dataclass(frozen=True)
class HandBuilt:
    """veth+bridge plumbing in plain namespaces: bridge in `hub`, endpoints `a` (.2) and `b` (.3)."""

    hub: Netns
    a: Netns
    b: Netns
    a_ip: str
    b_ip: str


@dataclass(frozen=True)
class HandBuiltMacvlan:
    """macvlan plumbing in plain namespaces, the same shape as the engine's: `host` has its own `lan0`
    (a veth whose peer is a port of the LAN's bridge, no address), and two macvlan devices (mode
    bridge) on it were moved into `a` and `b` as `eth0`, addressed in the LAN's subnet.
    """

    host: Netns
    a: Netns
    b: Netns
    a_ip: str
    b_ip: str


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def revision() -> str:
    """HEAD, plus the files of driver/ that differ from it."""
    rev = _git("rev-parse", "--short", "HEAD").strip()
    dirty = [line[3:] for line in _git("status", "--porcelain", "--", "driver").splitlines() if line.strip()]
    return rev + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def link_mtu(netns_path: str | Path, ifname: str = "eth0") -> int:
    """An interface's MTU in a namespace given by path, over netlink (/sys would show the host's)."""
    argv = ["nsenter", f"--net={netns_path}", "ip", "-j", "link", "show", ifname]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    return int(json.loads(out)[0]["mtu"])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    """Lab session + one engine (`kind`) + the pyoverlay driver in the engine's netns."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.session = LabSession()
        self.lab: Lab = self.session.lab("b")
        self.engine: Engine | None = None
        self.driver: DriverProcess | None = None
        self._networks: set[str] = set()
        self.procs = Procs()
        self._outside: Outside | None = None
        self._lan: Lan | None = None
        self._handbuilt: HandBuilt | None = None
        self._handbuilt_macvlan: HandBuiltMacvlan | None = None
        self.teardown_errors: list[str] = []
        self.revision = ""

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> Bench:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown_errors = self.close()

    def start(self) -> None:
        t0 = time.monotonic()
        self.engine = self.lab.engine(self.kind)
        # The driver first: a missing legacy plugin costs dockerd 15 s per lookup.
        self.driver = self.lab.driver(self.engine, cmd=self._driver_snapshot())
        # Production's level: at debug, uvicorn logs every request and each step is logged.
        self.driver.log_level = "info"
        self.driver.start()
        self.engine.start()
        log.info("lab up in %.1fs: dockerd %s pid %s, driver pid %s", time.monotonic() - t0, self.kind,
                 self.engine.pid, self.driver.pid)

    def _driver_snapshot(self) -> list[str] | None:
        """Run a copy of driver/ taken now: the tree may change during a run (the RSS benchmark restarts it)."""
        if os.environ.get(DRIVER_ENV):
            self.revision = f"command {os.environ[DRIVER_ENV]!r}"
            return None
        self.revision = f"{revision()} (a copy taken at start)"
        src = self.lab.dir / "src"
        shutil.copytree(REPO / "driver", src / "driver", ignore=shutil.ignore_patterns("__pycache__"))
        boot = f"import sys; sys.path.insert(0, {str(src)!r}); from driver.cli import main; sys.exit(main())"
        return [sys.executable, "-c", boot]

    def close(self) -> list[str]:
        """Stop our helper processes, then the lab; returns teardown errors and anything left behind."""
        self.stop_procs()
        errors = self.session.teardown()
        left = self.session.leftovers()
        errors += [f"left behind: {k} {v}" for k, v in left.items() if v]
        for e in errors:
            log.error("teardown: %s", e)
        return errors

    # --------------------------------------------------------------- access
    @property
    def eng(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("lab not started")
        return self.engine

    @property
    def drv(self) -> DriverProcess:
        if self.driver is None:
            raise RuntimeError("lab not started")
        return self.driver

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.eng.cli(*args, check=check, timeout=timeout)

    def version(self) -> str:
        return self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()

    def network(self, name: str) -> str:
        """The docker network `name` from NETWORKS, created on first use."""
        if name not in self._networks:
            if name == MACVLAN_NET:
                self.lan()  # its parent
            self.docker("network", "create", *NETWORKS[name], name)
            self._networks.add(name)
        return name

    def run_container(self, name: str, network: str, *extra: str) -> str:
        """`docker run -d` a `bb sleep` container; returns its name."""
        self.docker("run", "-d", "--name", name, "--network", network, *extra, "bb", "sleep", "86400")
        return name

    def container_pair(self, prefix: str, network: str) -> tuple[str, str, str]:
        """Containers `PREFIX-s` and `PREFIX-c` on `network`: (server netns, client netns, server IP)."""
        server, client = self.run_container(f"{prefix}-s", network), self.run_container(f"{prefix}-c", network)
        return self.container_netns(server), self.container_netns(client), self.container_ip(server, network)

    def remove_containers(self, names: Sequence[str]) -> None:
        if names:
            self.docker("rm", "-f", *names, timeout=300)

    def container_pid(self, name: str) -> int:
        return self.eng.container_pid(name)

    def container_ip(self, name: str, network: str) -> str:
        fmt = '{{(index .NetworkSettings.Networks "' + network + '").IPAddress}}'
        ip = self.docker("inspect", "-f", fmt, name).stdout.strip()
        if not ip:
            raise RuntimeError(f"container {name} has no address on {network}")
        return ip

    def container_netns(self, name: str) -> str:
        return f"/proc/{self.container_pid(name)}/ns/net"

    def outside(self) -> Outside:
        """The outside host 192.0.2.2 beyond the engine's uplink out0 192.0.2.1 (lab-only, no route further)."""
        if self._outside is None:
            self._outside = self.lab.outside(self.eng)
        return self._outside

    def lan(self) -> Lan:
        """The LAN behind the engine's macvlan parent `lan0`: a bridge in its own netns with the router
        (.1) and a LAN host (.10); lab-only, nothing routes beyond it."""
        if self._lan is None:
            self._lan = self.lab.lan(self.eng, subnet=str(LAN_SUBNET), parent_if=LAN_PARENT)
        return self._lan

    def handbuilt(self) -> HandBuilt:
        if self._handbuilt is None:
            hub, a, b = self.lab.netns("hub"), self.lab.netns("hba"), self.lab.netns("hbb")
            a_ip, b_ip = f"{HANDBUILT_SUBNET}.2", f"{HANDBUILT_SUBNET}.3"
            link_veth(a, "eth0", hub, "va", f"{a_ip}/24")
            link_veth(b, "eth0", hub, "vb", f"{b_ip}/24")
            add_bridge(hub, "br0", f"{HANDBUILT_SUBNET}.1/24", ports=("va", "vb"))
            self._handbuilt = HandBuilt(hub, a, b, a_ip, b_ip)
        return self._handbuilt

    def handbuilt_macvlan(self) -> HandBuiltMacvlan:
        """The engine's macvlan plumbing by hand, on a second port of the same LAN bridge (same MTU)."""
        if self._handbuilt_macvlan is None:
            lan = self.lan()
            host, a, b = self.lab.netns("mvh"), self.lab.netns("mva"), self.lab.netns("mvb")
            link_veth(host, LAN_PARENT, lan.ns, "p-hand")
            lan.ns.ip("link", "set", "p-hand", "master", lan.bridge, "up")
            a_ip, b_ip = str(LAN_SUBNET[20]), str(LAN_SUBNET[21])
            for ns, dev, ip in ((a, "mva", a_ip), (b, "mvb", b_ip)):
                host.ip("link", "add", dev, "link", LAN_PARENT, "type", "macvlan", "mode", "bridge")
                host.ip("link", "set", dev, "netns", ns.name)
                ns.ip("link", "set", dev, "name", "eth0")
                ns.addr_add("eth0", f"{ip}/{LAN_SUBNET.prefixlen}")
                ns.set_up("eth0")
                ns.ip("route", "add", "default", "via", lan.router_ip)
            self._handbuilt_macvlan = HandBuiltMacvlan(host, a, b, a_ip, b_ip)
        return self._handbuilt_macvlan

    def engine_iptables(self, *args: str) -> None:
        """Run the engine's own iptables (sid's for 28.5) in the engine's netns."""
        self.eng.run_in_mntns("iptables", "-w", "10", *args)

    def docker_proxy_pids(self) -> list[int]:
        """dockerd's docker-proxy children (the userland proxy of Docker's bridge)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if comm == "docker-proxy" and ppid == self.eng.pid:
                pids.append(int(entry))
        return pids

    # ------------------------------------------------------ helper processes
    def spawn(self, netns_path: str | Path, argv: Sequence[str]) -> subprocess.Popen[Any]:
        """Start `argv` in a network namespace (nsenter execs: the Popen PID is the process); tracked."""
        return self.procs.spawn(netns_path, argv)

    def stop_proc(self, p: subprocess.Popen[Any]) -> None:
        self.procs.stop_proc(p)

    def stop_procs(self) -> None:
        self.procs.stop_procs()


class Procs:
    """Helper processes (iperf3 servers, pollers) started in namespaces, stopped by PID."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def spawn(
        self, netns_path: str | Path, argv: Sequence[str], *, pipes: bool = False
    ) -> subprocess.Popen[Any]:
        """Start `argv` in a network namespace (nsenter execs: the Popen PID is the process); tracked.
        `pipes`: text stdin/stdout pipes (a line protocol) instead of /dev/null."""
        p = subprocess.Popen(
            ["nsenter", f"--net={netns_path}", *argv],
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, text=pipes,
        )
        self._procs.append(p)
        return p

    def stop_proc(self, p: subprocess.Popen[Any]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in (p.stdin, p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(ValueError):
            self._procs.remove(p)

    def stop_procs(self) -> None:
        procs = list(self._procs)
        for p in procs:
            self.stop_proc(p)
        left = wait_pids([p.pid for p in procs if pid_alive(p.pid)], 5.0)
        if left:
            log.error("helper processes still alive: %s", left)
