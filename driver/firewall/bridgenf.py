"""br_netfilter: traffic between two ports of one bridge crosses iptables only with it.

``icc=false`` (``-i BR -o BR -j DROP``) and a container reaching a sibling's published
port through the host (hairpin NAT) need it. dockerd up to 27 loaded the module at
start, so it was always on; 28+ loads it only when one of *its own* networks needs it
(moby db25b0dcd0), so on a 28/29 host with defaults it may be off and those rules would
silently do nothing. The sysctls are per network namespace, and the driver writes them
in its own, as dockerd does; inside a managed plugin /proc/sys is read-only, so when they
cannot be set the caller is told why and what the fix is.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc/sys/net/bridge")


def _sysctls(v6: bool) -> list[str]:
    return ["bridge-nf-call-iptables"] + (["bridge-nf-call-ip6tables"] if v6 else [])


def _modprobe() -> None:
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=10, check=False)


def ensure(v6: bool, proc: Path = PROC, load: Callable[[], None] | None = _modprobe) -> str | None:
    """Turn bridged traffic through iptables on; None when it is on, else why it is not and the fix."""
    if not proc.is_dir() and load is not None:
        load()  # not loaded (dockerd 28+ did not need it): loading it is what dockerd would do
    if not proc.is_dir():
        return ("the br_netfilter kernel module is not loaded, so traffic within a bridge bypasses iptables "
                "(fix: `modprobe br_netfilter` on the host, and list it in /etc/modules-load.d/)")  # fmt: skip
    for name in _sysctls(v6):
        path = proc / name
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
                log.info("set net.bridge.%s=1: bridged traffic must cross iptables", name)
        except OSError as err:
            return (f"net.bridge.{name} is 0, so traffic within a bridge bypasses iptables, and it cannot be set "
                    f"here ({err.strerror}) (fix: `sysctl -w net.bridge.{name}=1` on the host, and persist it "
                    "in /etc/sysctl.d/)")  # fmt: skip
    return None


_warned: set[bool] = set()


def best_effort(v6: bool) -> None:
    """For what merely works better with it (hairpin to a published port): warn once."""
    why = ensure(v6)
    if why and v6 not in _warned:
        _warned.add(v6)
        log.warning("a container reaching a sibling's published port through the host will fail: %s", why)
