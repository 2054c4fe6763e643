"""An etcd 3.4 cluster whose members run inside network namespaces (LAB.md §11).

Two layouts, one constructor: members given as ``(netns, ip)`` pairs.

* all members on one ``(netns, "127.0.0.1")``: identical pairs get port offsets
  (+10 per member), e.g. client ports 2379, 2389, 2399;
* one netns per member with its own IP (the multi-host lab attaches them to an
  underlay): every member uses ``client_port``/``peer_port``.

Each member is started as ``nsenter --net=<netns> etcd ...``; nsenter execs, so the PID
we hold is etcd's own. Everything is stopped by PID, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .netns import Netns
from .proc import LabError, pid_alive, tail, terminate_pids, wait_pids

# Failover in about half a second instead of the default 1 s election timeout; still
# 5 heartbeats, so a loaded 2-core machine does not trigger spurious elections. The
# lease minimum TTL follows (1.5 election timeouts, rounded up): 1 s.
HEARTBEAT_MS = 100
ELECTION_MS = 500
PORT_STEP = 10


@dataclass
class Member:
    name: str
    ns: Netns
    ip: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[Any] | None = None
    paused: bool = False
    _log: IO[bytes] | None = None

    tls: bool = False

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{_host(self.ip)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_host(self.ip)}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and pid_alive(self.proc.pid)


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


class EtcdCluster:
    def __init__(  # noqa: PLR0917 - members, workdir, ports: the order callers already use
        self,
        members: list[tuple[Netns, str]],
        workdir: Path,
        client_port: int = 2379,
        peer_port: int = 2380,
        name: str = "po-etcd",
        client_tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``client_tls``: (CA, certificate, key) files; clients then need https and a
        certificate signed by that CA (peers stay plaintext)."""
        if not members:
            raise ValueError("an etcd cluster needs at least one member")
        self.workdir = workdir
        self.token = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.client_tls = client_tls
        seen: Counter[tuple[str, str]] = Counter()
        self.members: list[Member] = []
        for i, (ns, ip) in enumerate(members):
            offset = PORT_STEP * seen[(ns.name, ip)]
            seen[(ns.name, ip)] += 1
            self.members.append(
                Member(
                    name=f"{name}{i}",
                    ns=ns,
                    ip=ip,
                    client_port=client_port + offset,
                    peer_port=peer_port + offset,
                    data_dir=workdir / f"{name}{i}.data",
                    log_path=workdir / f"{name}{i}.log",
                    tls=client_tls is not None,
                )
            )
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def __enter__(self) -> EtcdCluster:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- life cycle ------------------------------------------------------------------------
    def start_all(self, timeout: float = 20.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(len(self.members)):
                self._spawn(i)
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.teardown()
            raise

    def start(self, i: int, wait: bool = True, timeout: float = 15.0) -> None:
        """(Re)start member i with its data dir: it rejoins the cluster."""
        if self.members[i].alive():
            raise LabError(f"etcd member {i} is already running (pid {self.members[i].pid})")
        self._spawn(i)
        if wait:
            self.wait_healthy([i], timeout=timeout)

    def kill(self, i: int) -> None:
        """SIGKILL member i and reap it."""
        self._signal(i, signal.SIGKILL, 5.0)

    def stop(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM member i, wait for it (SIGKILL if it lingers)."""
        self._signal(i, signal.SIGTERM, timeout)

    def pause(self, i: int) -> None:
        """SIGSTOP member i: alive for TCP, silent for etcd (a frozen or cut-off host)."""
        m = self.members[i]
        if m.alive() and m.pid is not None:
            os.kill(m.pid, signal.SIGSTOP)
            m.paused = True

    def resume(self, i: int) -> None:
        m = self.members[i]
        if m.alive() and m.pid is not None:
            os.kill(m.pid, signal.SIGCONT)
        m.paused = False

    def teardown(self) -> None:
        """Stop members one at a time: SIGTERM to all at once costs ~6 s (each waits for
        the others while handing over leadership), one by one ~0.1 s each."""
        for i, m in enumerate(self.members):
            if m.paused:
                self.resume(i)
            if m.alive() and m.pid is not None:
                terminate_pids([m.pid], timeout=10.0, what=f"etcd member {m.name}")
            self._reap(m)
            shutil.rmtree(m.data_dir, ignore_errors=True)

    def leader(self) -> int | None:
        """Index of the current leader, as the live members report it."""
        live = [m for m in self.members if m.alive() and not m.paused]
        if not live:
            return None
        proc = live[0].ns.run(
            "etcdctl", f"--endpoints={','.join(m.client_url for m in live)}", "--command-timeout=1s",
            *self._ctl_tls(), "endpoint", "status", "-w", "json", check=False, timeout=10.0,
        )  # fmt: skip
        try:
            status = json.loads(proc.stdout)
        except ValueError:
            return None
        by_url = {m.client_url: i for i, m in enumerate(self.members)}
        ids = {s["Status"]["header"]["member_id"]: by_url.get(s["Endpoint"]) for s in status}
        leaders = {s["Status"]["leader"] for s in status}
        return ids.get(leaders.pop()) if len(leaders) == 1 else None

    # -- health -------------------------------------------------------------------------------
    def healthy(self, i: int) -> bool:
        """Member i answers a linearizable read (so it is up and the cluster has quorum)."""
        m = self.members[i]
        if not m.alive():
            return False
        proc = m.ns.run(
            "etcdctl", f"--endpoints={m.client_url}", "--dial-timeout=1s", "--command-timeout=1s",
            *self._ctl_tls(), "endpoint", "health", check=False, timeout=10.0,
        )  # fmt: skip
        return proc.returncode == 0

    def wait_healthy(self, which: list[int] | None = None, timeout: float = 20.0) -> None:
        which = list(range(len(self.members))) if which is None else which
        deadline = time.monotonic() + timeout
        pending = list(which)
        while pending:
            for i in list(pending):
                m = self.members[i]
                if not m.alive():
                    raise LabError(f"etcd member {m.name} exited:\n{tail(m.log_path)}")
                if self.healthy(i):
                    pending.remove(i)
            if pending and time.monotonic() > deadline:
                logs = "\n".join(f"--- {self.members[i].name}\n{tail(self.members[i].log_path)}" for i in pending)
                raise LabError(f"etcd members {pending} not healthy within {timeout:.0f}s\n{logs}")
            if pending:
                time.sleep(0.1)

    # -- internals ----------------------------------------------------------------------------
    def _ctl_tls(self) -> list[str]:
        if self.client_tls is None:
            return []
        ca, cert, key = self.client_tls
        return [f"--cacert={ca}", f"--cert={cert}", f"--key={key}"]

    def _argv(self, m: Member) -> list[str]:
        tls: list[str] = []
        if self.client_tls is not None:
            ca, cert, key = self.client_tls
            tls = [f"--cert-file={cert}", f"--key-file={key}", f"--trusted-ca-file={ca}", "--client-cert-auth"]
        return [
            "etcd",
            f"--name={m.name}",
            f"--data-dir={m.data_dir}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={self._initial}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",  # ignored once the data dir exists (a restart)
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--auto-compaction-retention=0",  # tests compact explicitly
            "--logger=zap",
            "--log-level=warn",
            *tls,
        ]

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        self._reap(m)
        m._log = open(m.log_path, "ab")  # noqa: SIM115 - lives as long as the member
        m.proc = m.ns.popen(self._argv(m), stdin=subprocess.DEVNULL, stdout=m._log, stderr=subprocess.STDOUT)

    def _signal(self, i: int, sig: int, timeout: float) -> None:
        m = self.members[i]
        if m.alive() and m.pid is not None:
            os.kill(m.pid, sig)
            if m.paused:
                self.resume(i)  # a stopped process acts on SIGTERM only once continued
            if wait_pids([m.pid], timeout):
                terminate_pids([m.pid], timeout=1.0, what=f"etcd member {m.name}")
        self._reap(m)

    @staticmethod
    def _reap(m: Member) -> None:
        if m.proc is not None:
            try:
                m.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                raise LabError(f"etcd member {m.name} (pid {m.proc.pid}) did not exit") from None
            m.proc = None
        if m._log is not None:
            m._log.close()
            m._log = None
