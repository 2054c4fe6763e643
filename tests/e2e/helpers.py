"""Helpers shared by the e2e modules: netcat.py servers and clients in namespaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NETCAT = Path(__file__).with_name("netcat.py")


class Servers:
    """netcat.py servers in namespaces, killed by PID afterwards."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, netns: str, proto: str, port: int, name: str) -> None:
        proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", sys.executable, str(NETCAT), "serve", proto, str(port), name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"{name} did not start"

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.procs.clear()


def ask(netns: str, proto: str, host: str, port: int) -> str | None:
    cmd = ["nsenter", f"--net={netns}", sys.executable, str(NETCAT), "ask", proto, host, str(port)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return r.stdout.strip() if r.returncode == 0 else None
