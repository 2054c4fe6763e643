"""A netlink poller run inside a namespace: waits for FDB and neighbour rows of one device to appear or go.

The bench starts `POLLER` with `nsenter --net=NS python -c POLLER` (see `Poller`); it talks JSON lines on
stdin/stdout. Raw rtnetlink dumps (no pyroute2, no subprocess per poll): a dump of a few hundred rows costs
well under a millisecond, so a 3 ms cadence hardly loads the machine. Times are CLOCK_MONOTONIC, the same
clock as the bench's `time.monotonic()`.

    -> {"op": "wait", "dev": "pov...", "fdb": {MAC: VTEP|null}, "fdb_absent": [MAC], "neigh": {IP: MAC},
        "neigh_absent": [IP], "timeout": 10, "interval": 0.003, "hold": null, "duty": null}
    <- {"started": T}                      after the first poll (the bench acts only then)
    <- {"ok": bool, "t": {"fdb": T, "fdb_absent": T, "neigh": T, "neigh_absent": T, "all": T}, "first": T,
        "polls": N, "missing": {...}}       each group's first poll that found it satisfied
    with "hold": S, it polls for S seconds whatever it finds and adds "bad_polls": the polls that found
    something missing (a restart that must not disturb what is programmed). With "duty": F, the pause after a
    dump is long enough that the poller takes at most F of a CPU (a dump of 2,000 rows costs ~14 ms here).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

from bench.context import Procs

POLLER = r"""
import json, socket, struct, sys, time
AF_BRIDGE, RTM_GETNEIGH, NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 7, 30, 1, 0x300, 2, 3
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((0, 0))
seq = 0

def mac(b):
    return ":".join(f"{x:02x}" for x in b)

def ip(b):
    return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)

def dump(family, ifindex):
    global seq
    seq += 1
    body = struct.pack("=BBHiHBB", family, 0, 0, 0, 0, 0, 0)
    s.send(struct.pack("=IHHII", 16 + len(body), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    rows = {}
    while True:
        data = s.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            ln, typ, _, sq, _ = struct.unpack_from("=IHHII", data, off)
            if ln < 16:
                break
            if sq == seq:
                if typ == NLMSG_DONE:
                    return rows
                if typ == NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(-err, "netlink dump failed")
                fam, _, _, idx, state, flags, _ = struct.unpack_from("=BBHiHBB", data, off + 16)
                if idx == ifindex:
                    a, dst, ll = off + 28, None, None
                    while a + 4 <= off + ln:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        if atype == 1:
                            dst = data[a + 4:a + alen]
                        elif atype == 2:
                            ll = data[a + 4:a + alen]
                        a += (alen + 3) & ~3
                    if fam == AF_BRIDGE and ll is not None and dst is not None:
                        rows[mac(ll)] = ip(dst)          # the vxlan device's own rows (with a dst)
                    elif fam != AF_BRIDGE and ll is not None and dst is not None:
                        rows[ip(dst)] = mac(ll)
            off += (ln + 3) & ~3

def wait(cmd):
    idx = socket.if_nametoindex(cmd["dev"])
    fdb = {k.lower(): v for k, v in cmd.get("fdb", {}).items()}
    fdb_absent = {k.lower() for k in cmd.get("fdb_absent", [])}
    neigh = {k: v.lower() for k, v in cmd.get("neigh", {}).items()}
    neigh_absent = set(cmd.get("neigh_absent", []))
    deadline = time.monotonic() + cmd.get("timeout", 10.0)
    interval = cmd.get("interval", 0.003)
    groups = [g for g, want in (("fdb", fdb), ("fdb_absent", fdb_absent), ("neigh", neigh),
                                ("neigh_absent", neigh_absent)) if want]
    hold = cmd.get("hold")  # seconds: keep polling that long, counting the polls that found something missing
    t, polls, first, bad = {}, 0, None, 0
    duty = cmd.get("duty")  # at most this share of a CPU: sleep long enough after a costly dump
    while True:
        d0 = time.monotonic()
        f = dump(AF_BRIDGE, idx) if (fdb or fdb_absent) else {}
        n = dump(socket.AF_INET, idx) if (neigh or neigh_absent) else {}
        now = time.monotonic()
        polls += 1
        miss = {
            "fdb": sum(1 for k, v in fdb.items() if (f.get(k) != v if v else k not in f)),
            "fdb_absent": len(fdb_absent & f.keys()),
            "neigh": sum(1 for k, v in neigh.items() if n.get(k) != v),
            "neigh_absent": len(neigh_absent & n.keys()),
        }
        for g in groups:
            if not miss[g] and g not in t:
                t[g] = now
        if first is None:
            first = now
            print(json.dumps({"started": now}), flush=True)
        if hold is not None:
            bad += any(miss[g] for g in groups)
            if now - first >= hold:
                return {"ok": bad == 0, "t": t, "first": first, "polls": polls, "bad_polls": bad, "missing": {}}
        elif all(not miss[g] for g in groups):
            t["all"] = now
            return {"ok": True, "t": t, "first": first, "polls": polls, "missing": {}}
        if now > deadline:
            return {"ok": False, "t": t, "first": first, "polls": polls, "bad_polls": bad,
                    "missing": {g: miss[g] for g in groups}}
        cost = time.monotonic() - d0
        time.sleep(max(interval, cost * (1 / duty - 1)) if duty else interval)

for line in sys.stdin:
    cmd = json.loads(line)
    try:
        out = wait(cmd)
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""


class PollerError(RuntimeError):
    pass


class Poller:
    """The poller in one namespace; one wait at a time (`start` then `result`, or `wait`)."""

    def __init__(self, procs: Procs, netns_path: str) -> None:
        self.procs = procs
        self.proc: subprocess.Popen[Any] = procs.spawn(netns_path, [sys.executable, "-c", POLLER], pipes=True)

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise PollerError(f"netlink poller exited (rc={self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise PollerError(out["error"])
        return out

    def start(
        self,
        dev: str,
        *,
        fdb: dict[str, str | None] | None = None,
        fdb_absent: list[str] | None = None,
        neigh: dict[str, str] | None = None,
        neigh_absent: list[str] | None = None,
        timeout: float = 10.0,
        interval: float = 0.003,
        hold: float | None = None,
        duty: float | None = None,
    ) -> float:
        """Begin a wait; returns once the first poll is done (its time)."""
        cmd = {"op": "wait", "dev": dev, "fdb": fdb or {}, "fdb_absent": fdb_absent or [], "neigh": neigh or {},
               "neigh_absent": neigh_absent or [], "timeout": timeout, "interval": interval, "hold": hold,
               "duty": duty}  # fmt: skip
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return float(self._line()["started"])

    def result(self) -> dict[str, Any]:
        return self._line()

    def wait(self, dev: str, **kwargs: Any) -> dict[str, Any]:
        self.start(dev, **kwargs)
        return self.result()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        self.procs.stop_proc(self.proc)
