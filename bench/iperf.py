"""The host's iperf3, run inside a namespace with `nsenter --net=` (no iperf3 image needed)."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.context import Bench, cpu_seconds

log = logging.getLogger("bench")
PORT = 5201
_LISTEN = "0A"


@dataclass(frozen=True)
class Result:
    bits_per_second: float
    retransmits: int

    @property
    def gbps(self) -> float:
        return self.bits_per_second / 1e9


class IperfError(RuntimeError):
    pass


class Spawner(Protocol):
    """What starts and stops helper processes: a `Bench`, or a bare `bench.context.Procs`."""

    def spawn(self, netns_path: str | Path, argv: Sequence[str]) -> subprocess.Popen[Any]: ...
    def stop_proc(self, p: subprocess.Popen[Any]) -> None: ...


def _listening(pid: int, port: int) -> bool:
    """Whether the process's netns has a TCP listener on `port` (from /proc/PID/net/tcp{,6})."""
    want = f":{port:04X}"
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(want) and fields[3] == _LISTEN:
                return True
    return False


def start_server(b: Spawner, netns_path: str | Path, port: int = PORT, timeout: float = 10.0) -> subprocess.Popen[Any]:
    """A persistent `iperf3 -s` in the namespace; returns once it listens."""
    p = b.spawn(netns_path, ["iperf3", "-s", "-p", str(port)])
    deadline = time.monotonic() + timeout
    while not _listening(p.pid, port):
        if p.poll() is not None:
            raise IperfError(f"iperf3 server in {netns_path} exited with {p.returncode}")
        if time.monotonic() > deadline:
            b.stop_proc(p)
            raise IperfError(f"iperf3 server in {netns_path} not listening after {timeout}s")
        time.sleep(0.02)
    return p


def client(netns_path: str | Path, host: str, port: int = PORT, seconds: int = 5) -> Result:
    """One `iperf3 -c -J` run from the namespace; the receiver's rate."""
    argv = [
        "nsenter", f"--net={netns_path}", "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J",
        "--connect-timeout", "3000",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise IperfError(f"iperf3 -c {host}:{port}: rc={proc.returncode} {proc.stderr.strip()[:300]}") from None
    if "error" in data:
        raise IperfError(f"iperf3 -c {host}:{port}: {data['error']}")
    end = data["end"]
    return Result(float(end["sum_received"]["bits_per_second"]), int(end["sum_sent"].get("retransmits", 0)))


@dataclass(frozen=True)
class Flow:
    """One measured path: the client's netns and where it connects."""

    label: str
    client_ns: str
    host: str
    port: int = PORT


def measure(flow: Flow, seconds: int) -> Result:
    return client(flow.client_ns, flow.host, flow.port, seconds)


def warm_and_interleave(
    b: Bench, flows: list[Flow], what: str, *, reps: int, seconds: int, warmup: int
) -> tuple[dict[str, list[Result]], float]:
    """One discarded warm-up per flow (which also proves each path works), then
    ``interleave``; returns the results and the driver's CPU seconds meanwhile."""
    for f in flows:
        measure(f, warmup)
    cpu0 = cpu_seconds(b.drv.pid or 0)
    results = interleave(flows, reps, seconds, what)
    return results, cpu_seconds(b.drv.pid or 0) - cpu0


def interleave(
    flows: list[Flow], reps: int, seconds: int, what: str, run: Callable[[Flow, int], Result] = measure
) -> dict[str, list[Result]]:
    """`reps` rounds over all flows, the order rotated each round (each flow in each position equally often);
    `run` measures one flow (default `measure`; a wrapper can read counters around it)."""
    out: dict[str, list[Result]] = {f.label: [] for f in flows}
    for i in range(reps):
        for f in flows[i % len(flows):] + flows[: i % len(flows)]:
            out[f.label].append(run(f, seconds))
        log.info("%s: round %d/%d", what, i + 1, reps)
    return out
