"""Process helpers: run commands, wait for and kill processes by PID."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("lab")


class LabError(RuntimeError):
    """A harness step failed (the message carries the command output or a log tail)."""


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output; on failure raise LabError with stdout/stderr."""
    argv = [os.fspath(c) for c in cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, env=env, check=False)
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed (rc={proc.returncode}): {' '.join(argv)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def pid_alive(pid: int) -> bool:
    """True while the PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The state field follows the parenthesised comm, which may contain spaces.
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat): PID plus this is unique."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pids_alive(pids: Iterable[int]) -> list[int]:
    """The subset of `pids` that are still running."""
    return [p for p in pids if pid_alive(p)]


def wait_pids(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until all PIDs are gone; return those still alive at the deadline."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = pids_alive(left)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def terminate_pids(pids: Iterable[int], timeout: float = 10.0, what: str = "process") -> list[int]:
    """SIGTERM, wait, then SIGKILL what is left; return the PIDs that were SIGKILLed."""
    pids = pids_alive(pids)
    if not pids:
        return []
    signal_pids(pids, signal.SIGTERM)
    left = wait_pids(pids, timeout)
    if left:
        log.warning("%s %s did not exit after SIGTERM within %.0fs; SIGKILL", what, left, timeout)
        signal_pids(left, signal.SIGKILL)
        still = wait_pids(left, 10.0)
        if still:
            log.error("%s %s survived SIGKILL", what, still)
    return left


def ns_inode(path: str | os.PathLike[str]) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def pids_in_namespace(ns_path: str | os.PathLike[str], kind: str = "net") -> list[int]:
    """PIDs whose `kind` namespace (net, mnt, ...) is the one bound at `ns_path`.

    Everything in a namespace the harness created is ours, so this finds strays
    (containerd, shims) without matching on process names.
    """
    try:
        target = ns_inode(ns_path)
    except FileNotFoundError:
        return []
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if ns_inode(f"/proc/{entry}/ns/{kind}") == target and pid_alive(int(entry)):
                found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages."""
    try:
        data = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"<{path} missing>"
    return "\n".join(data[-lines:])
