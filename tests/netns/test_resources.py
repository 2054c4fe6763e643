"""Resource trouble on a real kernel: a full or read-only state dir, the xtables lock held
by someone else, a call stuck in the kernel. Each call fails within its bound with a
message that says what is wrong, leaves nothing half-done, and the driver goes on serving.

The state dir is a tmpfs of 512 KiB this test mounts (and unmounts); the xtables lock is
a file of the test's own (``XTABLES_LOCKFILE``, which iptables honours), so the host's
lock is never taken; the stuck call is the fault hook's ``stall``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.test_bridge import endpoint
from tests.plugin import Plugin, start_plugin, stop_plugin


def net(n: int) -> dict[str, Any]:
    """Network n: its own ID and /24, no IPv6 (one firewall family keeps it simple)."""
    return {
        "NetworkID": f"{n:02x}" * 32,
        "Options": {"com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "PyoverlayLocal", "Gateway": f"10.71.{n}.1/24", "Pool": f"10.71.{n}.0/24"}],
    }


def bridge(n: int) -> str:
    return "po-" + f"{n:02x}" * 6


def ep(n: int, eid: str, addr: str) -> dict[str, Any]:
    return endpoint(eid, addr) | {"NetworkID": net(n)["NetworkID"]}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    began = time.monotonic()
    out = fn()
    return out, time.monotonic() - began


def poll(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


# -- a full or read-only state dir -------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Plugin, Path]]:
    root = tmp_path / "plugin"
    state = root / "state"
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(state)], check=True)
    try:
        p = start_plugin(root)
        try:
            yield p, state
        finally:
            stop_plugin(p)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(state)], check=False)
        subprocess.run(["umount", str(state)], check=True)


def fill(state: Path) -> Path:
    filler = state / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 1):  # big steps, then the last bytes of a partly used page
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def refused_cleanly(p: Plugin, state: Path, cause: str) -> None:
    """Every kind of state-changing call fails fast, says why, and changes nothing."""
    before = p.snapshot()
    for verb, body in [
        ("NetworkDriver.CreateNetwork", net(3)),
        ("NetworkDriver.CreateEndpoint", ep(1, "e2" * 32, "10.71.1.6/24")),
        ("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "10.71.9.0/24"}),
        ("NetworkDriver.DeleteEndpoint", {"NetworkID": net(1)["NetworkID"], "EndpointID": "e1" * 32}),
        ("NetworkDriver.DeleteNetwork", {"NetworkID": net(2)["NetworkID"]}),
    ]:
        (code, out), took = timed(lambda: p.call(verb, body))  # noqa: B023 - called at once
        assert code == 507 and cause in out["Err"] and "state directory" in out["Err"], (verb, code, out)
        assert took < 5, (verb, took)
    assert p.snapshot() == before, "a call that could not save its record changed something"
    assert {bridge(1), bridge(2)} <= p.link_names(), "a refused delete keeps the network whole"
    assert not list(state.rglob("*.tmp")), "no half-written record left behind"
    assert p.ok("NetworkDriver.GetCapabilities")["Scope"] == "local", "the driver still serves"


def test_a_full_then_read_only_state_dir_fails_calls_cleanly(small_disk: tuple[Plugin, Path]) -> None:
    p, state = small_disk
    # Positive control: with room, the same kinds of calls go through.
    p.ok("NetworkDriver.CreateNetwork", net(1))
    p.ok("NetworkDriver.CreateNetwork", net(2))
    p.ok("NetworkDriver.CreateEndpoint", ep(1, "e1" * 32, "10.71.1.5/24"))
    assert {bridge(1), bridge(2)} <= p.link_names()

    filler = fill(state)
    refused_cleanly(p, state, "No space left on device")
    filler.unlink()
    p.ok("NetworkDriver.CreateNetwork", net(3))  # dockerd's retry, once there is room
    assert bridge(3) in p.link_names()
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net(3)["NetworkID"]})

    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    refused_cleanly(p, state, "Read-only file system")
    subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net(2)["NetworkID"]})
    assert bridge(2) not in p.link_names()
    # And the records agree with the kernel: a restart reconciles nothing away.
    before = p.snapshot()
    p.restart()
    assert p.snapshot() == before
    assert p.call("Pyoverlay.Status")[1]["startup"]["failures"] == []


# -- the xtables lock held by someone else ---------------------------------------------

LOCK_WAIT = 3  # the driver's --firewall-timeout in this test


@pytest.fixture
def legacy_plugin(tmp_path: Path) -> Iterator[tuple[Plugin, Path]]:
    if subprocess.run(["iptables-legacy", "-V"], capture_output=True, check=False).returncode != 0:
        pytest.fail("iptables-legacy missing: scripts/test installs the iptables package")
    lock = tmp_path / "xtables.lock"
    env = {"PYOVERLAY_FIREWALL_BACKEND": "legacy", "PYOVERLAY_FIREWALL_TIMEOUT": str(LOCK_WAIT),
           "XTABLES_LOCKFILE": str(lock)}  # fmt: skip
    p = start_plugin(tmp_path / "plugin", env)
    try:
        yield p, lock
    finally:
        stop_plugin(p)


def legacy_rules(p: Plugin) -> list[str]:
    out = p.ns.run("iptables-legacy-save").stdout
    return [line for line in out.splitlines() if "PYOVERLAY" in line and not line.startswith(":")]


class HeldLock:
    """The lock held the way iptables itself holds it (flock), by this test process."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def test_a_held_xtables_lock_fails_the_call_in_time_and_nothing_is_left(legacy_plugin: tuple[Plugin, Path]) -> None:
    p, lockfile = legacy_plugin
    # Positive control: the lock free, a network gets its rules in the legacy tables.
    p.ok("NetworkDriver.CreateNetwork", net(1))
    assert any(bridge(1) in r for r in legacy_rules(p))

    lock = HeldLock(lockfile)
    try:
        before = p.snapshot()
        rules = legacy_rules(p)
        (code, out), took = timed(lambda: p.call("NetworkDriver.CreateNetwork", net(2)))
        assert code == 503 and "another program holds the xtables lock" in out["Err"], out
        assert str(lockfile) in out["Err"]
        # Its own wait, then the rollback's: each bounded by the firewall timeout.
        assert took < 2 * LOCK_WAIT + 3, took
        assert p.snapshot() == before and legacy_rules(p) == rules, "the failed create left something"
        # Calls that need no rule change are served meanwhile.
        p.ok("NetworkDriver.CreateEndpoint", ep(1, "e1" * 32, "10.71.1.5/24"))
        p.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net(1)["NetworkID"], "EndpointID": "e1" * 32})
        # A delete is done when the kernel and the records are: its rules follow later.
        p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net(1)["NetworkID"]})
        assert bridge(1) not in p.link_names()
        assert any(bridge(1) in r for r in legacy_rules(p)), "rules can't have changed under the lock"
    finally:
        lock.release()
    # The background check retries the failed apply (backing off: the 3rd retry waits 8 s).
    poll(lambda: not any(bridge(1) in r for r in legacy_rules(p)), 30, "rules of the deleted network removed")
    p.ok("NetworkDriver.CreateNetwork", net(2))
    assert any(bridge(2) in r for r in legacy_rules(p))


# -- a call stuck in the kernel ----------------------------------------------------------

REQUEST_TIMEOUT = 3
STALL = 8


def test_a_stuck_call_answers_in_time_and_what_waited_behind_it_never_runs(tmp_path: Path) -> None:
    stuck = net(1)["NetworkID"][:12]
    env = {"PYOVERLAY_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
           "PYOVERLAY_FAIL_STEP": f"stall={STALL}:create network {stuck}: bring up"}  # fmt: skip
    p = start_plugin(tmp_path / "plugin", env)
    try:
        p.wait_ready()
        # Positive control: a network on which nothing stalls.
        p.ok("NetworkDriver.CreateNetwork", net(3))
        results: dict[str, tuple[int, Any, float]] = {}

        def call(key: str, verb: str, body: Any) -> None:
            (code, out), took = timed(lambda: p.call(verb, body))
            results[key] = (code, out, took)

        first = threading.Thread(target=call, args=("stuck", "NetworkDriver.CreateNetwork", net(1)))
        first.start()
        poll(lambda: bridge(1) in p.link_names(), 5, "the stuck create reached its bridge")
        behind = threading.Thread(target=call, args=("queued", "NetworkDriver.CreateNetwork", net(2)))
        behind.start()
        # Served meanwhile: what never queues on the worker.
        assert p.ok("NetworkDriver.GetCapabilities")["Scope"] == "local"
        status = p.call("Pyoverlay.Status")[1]
        assert any(r["verb"] == "NetworkDriver.CreateNetwork" for r in status["in_flight"]), status
        assert status["worker"].startswith(f"create_network at 'create network {stuck}: bring up"), status
        first.join(REQUEST_TIMEOUT + 5)
        behind.join(REQUEST_TIMEOUT + 5)
        code, out, took = results["stuck"]
        assert code == 503 and took < REQUEST_TIMEOUT + 1.5, (code, out, took)
        assert f"create network {stuck}: bring up" in out["Err"] and "undone" in out["Err"], out
        code, out, took = results["queued"]
        assert code == 503 and "was not run" in out["Err"] and f"create network {stuck}" in out["Err"], out
        # Once the kernel answers, the abandoned create is rolled back, and the cancelled
        # one never ran: dockerd, told both failed, knows neither.
        poll(lambda: bridge(1) not in p.link_names(), STALL + 5, "the abandoned create rolled back")
        p.wait_ready()
        assert bridge(2) not in p.link_names()
        records = {f.stem for f in (p.driver.state_dir / "store" / "network").glob("*.json")}
        assert records == {net(3)["NetworkID"]}, records
        # dockerd's retries now go through (the stall was a one-off).
        p.ok("NetworkDriver.CreateNetwork", net(1))
        p.ok("NetworkDriver.CreateNetwork", net(2))
        assert {bridge(1), bridge(2), bridge(3)} <= p.link_names()
    finally:
        stop_plugin(p)
