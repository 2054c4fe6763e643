"""pyoverlay doctor inside a lab engine's netns: ok on a healthy host, and the problems
made on purpose (in that netns only) are caught; each is undone before the next.

One engine kind (20.10): the checks read the same kernel and rules on 28.5, and a 28.5
engine costs a pivoted rootfs for no new information here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Host
from tests.lab import run

pytestmark = pytest.mark.lab(kinds=("20.10",))
REPO = Path(__file__).resolve().parents[2]
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"


def doctor(host: Host) -> tuple[int, dict[str, str]]:
    assert host.driver is not None
    argv = host.engine.netns.cmd(sys.executable, "-m", "driver", "doctor", "--socket", str(host.driver.socket_path),
                                 "--state-dir", str(host.driver.state_dir), "--docker-host", host.engine.host_url)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = run(argv, check=False, timeout=60, env=env)
    lines = {}
    for line in r.stdout.splitlines():
        level, _, rest = line.partition("  ")
        lines[rest.split(":", 1)[0].strip()] = f"{level.strip()} {rest}"
    return r.returncode, lines


@pytest.fixture(scope="module")
def lab_host(host: Host) -> Iterator[Host]:
    # A network, so the driver has its FORWARD jump (it keeps none without networks).
    host.engine.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.55.0.0/24", "docnet")
    yield host
    host.engine.remove_objects()


def test_healthy_host_is_ok(lab_host: Host) -> None:
    rc, lines = doctor(lab_host)
    print("\n".join(lines.values()))  # shown with -s: what a healthy lab host reports
    assert rc == 0, lines
    for check in ("dockerd", "driver", "firewall", "forward jump", "br_netfilter", "ipv4 forwarding"):
        assert lines[check].startswith("ok "), lines[check]
    assert "20.10" in lines["dockerd"] and "after DOCKER-USER" in lines["forward jump"]


def test_bridge_netfilter_off_is_caught(lab_host: Host) -> None:
    ns = lab_host.engine.netns
    before = ns.run("sysctl", "-n", BRIDGE_NF).stdout.strip()
    ns.run("sysctl", "-w", f"{BRIDGE_NF}=0")  # per netns: only the lab host's
    try:
        rc, lines = doctor(lab_host)
    finally:
        ns.run("sysctl", "-w", f"{BRIDGE_NF}={before}")
    assert rc == 1 and lines["br_netfilter"].startswith("fail ") and "icc=false" in lines["br_netfilter"]


def test_deleted_forward_jump_is_caught(lab_host: Host) -> None:
    ns = lab_host.engine.netns

    def forward() -> list[str]:
        return [r for r in ns.run("iptables", "-S", "FORWARD").stdout.splitlines() if r.startswith("-A ")]

    position = forward().index("-A FORWARD -j PYOVERLAY-FORWARD") + 1
    # The driver puts a missing jump back within its firewall check interval (2 s), so
    # keep deleting it while doctor runs; the loop is killed by its PID afterwards.
    loop = ns.popen(["sh", "-c", "while :; do iptables -D FORWARD -j PYOVERLAY-FORWARD 2>/dev/null; sleep 0.05; done"])
    try:
        for _ in range(3):  # doctor may still read the moment between a repair and the next delete
            rc, lines = doctor(lab_host)
            if lines["forward jump"].startswith("fail "):
                break
    finally:
        loop.kill()
        loop.wait(10)
        if "-A FORWARD -j PYOVERLAY-FORWARD" not in forward():
            ns.run("iptables", "-I", "FORWARD", str(position), "-j", "PYOVERLAY-FORWARD")
    assert rc == 1 and lines["forward jump"].startswith("fail ")
    assert "no jump to PYOVERLAY-FORWARD" in lines["forward jump"] and "restart the driver" in lines["forward jump"]
    assert forward().count("-A FORWARD -j PYOVERLAY-FORWARD") == 1


def test_stopped_dockerd_is_caught_and_the_rest_still_checked(lab_host: Host) -> None:
    lab_host.engine.stop()
    try:
        rc, lines = doctor(lab_host)
    finally:
        lab_host.engine.start()
    assert rc == 1 and lines["dockerd"].startswith("fail ")
    assert lines["driver"].startswith("ok ") and lines["forward jump"].startswith("ok ")
    assert lines["forward policy"].startswith("warn ") and "left by dockerd" in lines["forward policy"]
