"""Run ``driver.netlink.adapter.Netlink`` calls inside a test namespace, and measure what crossed.

The adapter acts on the caller's own namespace, so a ``Remote`` keeps one Python worker
per namespace, started with ``nsenter --net=<ns>``: batches of calls go in as JSON lines
and results (dataclasses as dicts) come back the same way. One worker, not one process
per call: starting Python and importing pyroute2 costs ~0.35 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.lab import Netns

ROOT = Path(__file__).resolve().parents[2]

_WORKER = r"""
import dataclasses, json, sys
sys.path.insert(0, sys.argv[1])
from driver.errors import DriverError
from driver.netlink.adapter import Netlink

def enc(v):
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    if isinstance(v, (tuple, list)):
        return [enc(x) for x in v]
    return v

nl = Netlink()
for line in sys.stdin:
    out = []
    for method, args, kwargs in json.loads(line):
        try:
            out.append({"ok": enc(getattr(nl, method)(*args, **kwargs))})
        except DriverError as err:
            out.append({"error": type(err).__name__, "message": err.message})
    print(json.dumps(out), flush=True)
nl.close()
"""

# An ICMP echo with the IPv4 DF bit forced (IP_PMTUDISC_DO), like iputils' ``ping -M do``:
# busybox ping has no -M, and its default (PMTUDISC_WANT) fragments an oversized echo locally.
# Exit 0 on a reply within 1 s, 3 on none, 2 if the kernel refuses to send it unfragmented
# (1 stays Python's own exit code for a crash).
_DF_PING = r"""
import os, socket, struct, sys, time
dst, size = sys.argv[1], int(sys.argv[2])
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
ident = os.getpid() & 0xFFFF
body = bytes(size)
pkt = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + body
pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
try:
    s.sendto(pkt, (dst, 0))
except OSError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
deadline = time.monotonic() + 1
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, _ = s.recvfrom(65535)
    except TimeoutError:
        break
    icmp = data[(data[0] & 0xF) * 4:]
    if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(3)
"""


class RemoteError(Exception):
    """A ``DriverError`` raised by the adapter inside the namespace."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    return (method, args, kwargs)


class Remote:
    """``Netlink()`` of another namespace: ``Remote(ns).fdb_entries("vx0")``, or a batch."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self._proc: subprocess.Popen[str] | None = None

    def outcomes(self, *calls: Call) -> list[Any]:
        """Run every call in order; each result is a value or the RemoteError it raised."""
        if self._proc is None:
            self._proc = self.ns.popen([sys.executable, "-c", _WORKER, str(ROOT)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        assert self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps(calls) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"netlink worker in {self.ns.name} exited ({self._proc.wait(5)})")
        return [RemoteError(r["error"], r["message"]) if "error" in r else r["ok"] for r in json.loads(line)]

    def batch(self, *calls: Call) -> list[Any]:
        """Run calls in order; raise the first RemoteError (calls after it have run too)."""
        results = self.outcomes(*calls)
        for r in results:
            if isinstance(r, RemoteError):
                raise r
        return results

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.batch(call(method, *args, **kwargs))[0]

    def close(self) -> None:
        """End the worker: EOF on stdin, then by its PID if it does not go."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        finally:
            if proc.stdout:
                proc.stdout.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def ping(ns: Netns, address: str) -> bool:
    """One busybox echo, one second to answer."""
    six = ["-6"] if ":" in address else []
    return ns.run("/bin/busybox", "ping", *six, "-c", "1", "-W", "1", address, check=False).returncode == 0


def ping_ok(ns: Netns, address: str, tries: int = 3) -> bool:
    """Positive check, polled: a first echo may race a link or route that just came up."""
    return any(ping(ns, address) for _ in range(tries))


def df_ping(ns: Netns, address: str, size: int) -> int:
    """0 = answered, 3 = no answer, 2 = refused locally (larger than the path MTU, DF set)."""
    return ns.run(sys.executable, "-c", _DF_PING, address, str(size), check=False).returncode


def link_stats(ns: Netns, ifname: str) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = ns.ip_json("-s", "link", "show", ifname)[0]["stats64"]
    return stats


def snmp(ns: Netns, proto: str) -> dict[str, int]:
    """One protocol's counters from /proc/net/snmp, which follows the reader's netns."""
    header, values = (line.split()[1:] for line in ns.run("cat", "/proc/net/snmp").stdout.splitlines()
                      if line.startswith(f"{proto}:"))
    return dict(zip(header, map(int, values), strict=True))
