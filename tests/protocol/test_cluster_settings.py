"""The cluster store as dockerd meets it when etcd is missing, unreachable or misconfigured.

Nothing listens on the etcd endpoint given here (a port on the test namespace's own
loopback), which is the case the driver must survive: it listens at once, answers what
needs no cluster, and fails what does within a few seconds, naming etcd.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab import DriverProcess
from tests.plugin import Plugin

DEAD_ETCD = {
    "PYOVERLAY_STORE": "etcd",
    "PYOVERLAY_ETCD_ENDPOINTS": "http://127.0.0.1:2",
    "PYOVERLAY_ADVERTISE_ADDR": "127.0.0.1",
}


@pytest.fixture
def dead_etcd(make_plugin: Callable[[dict[str, str]], Plugin]) -> Iterator[Plugin]:
    yield make_plugin(DEAD_ETCD)


def _pool(p: Plugin, subnet: str) -> str:
    out = p.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": subnet, "Options": {}, "V6": False})
    pool_id = str(out["PoolID"])
    p.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "",
                                       "Options": {"RequestAddressType": "com.docker.network.gateway"}})  # fmt: skip
    return pool_id


def _overlay(nid: str, subnet: str, gateway: str, space: str = "PyoverlayLocal") -> dict[str, object]:
    return {
        "NetworkID": nid,
        "Options": {"com.docker.network.generic": {"mode": "overlay", "overlay": "app"},
                    "com.docker.network.enable_ipv6": False},
        "IPv4Data": [{"AddressSpace": space, "Pool": subnet, "Gateway": gateway}],
        "IPv6Data": [],
    }  # fmt: skip


def test_listens_at_once_with_etcd_unreachable(plugin: Plugin, tmp_path: Path) -> None:
    plugin.close()
    plugin.driver.stop()
    drv = DriverProcess(plugin.ns, tmp_path, tmp_path / "state", tmp_path / "d.log", env=DEAD_ETCD)
    t0 = time.monotonic()
    proc = subprocess.Popen(plugin.ns.cmd(*drv.argv()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(DEAD_ETCD))  # fmt: skip
    try:
        while True:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(drv.socket_path))
                    break
                except OSError:
                    assert proc.poll() is None, "the driver exited"
                    assert time.monotonic() - t0 < 5, "socket never came up"
                    time.sleep(0.005)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, f"socket took {elapsed:.2f}s with etcd unreachable"
    finally:
        proc.terminate()
        proc.wait(10)


def _env(extra: dict[str, str]) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])) | extra


def test_what_needs_no_cluster_works_and_what_does_fails_fast_naming_etcd(dead_etcd: Plugin) -> None:
    p = dead_etcd
    assert p.ok("NetworkDriver.GetCapabilities")["Scope"] == "local"
    # a bridge network needs no cluster
    pool = _pool(p, "10.80.0.0/24")
    bridge = _overlay("b" * 64, "10.80.0.0/24", "10.80.0.1/24")
    bridge["Options"] = {"com.docker.network.generic": {}}
    p.ok("NetworkDriver.CreateNetwork", bridge)
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": "b" * 64})
    p.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    # an overlay does, and says so within a few seconds
    _pool(p, "10.81.0.0/16")
    before = p.snapshot()
    t0 = time.monotonic()
    status, out = p.call("NetworkDriver.CreateNetwork", _overlay("a" * 64, "10.81.0.0/16", "10.81.0.1/16"))
    took = time.monotonic() - t0
    assert status == 503 and "etcd" in out["Err"], (status, out)
    assert took < 8, f"failing took {took:.1f}s"
    after = p.snapshot()
    assert after[:3] == before[:3], "links, addresses or rules changed"


def test_overlay_with_dockers_default_ipam_is_refused(dead_etcd: Plugin) -> None:
    err = dead_etcd.err("NetworkDriver.CreateNetwork",
                        _overlay("c" * 64, "10.82.0.0/16", "10.82.0.1/16", space="LocalDefault"), 400)  # fmt: skip
    assert "--ipam-driver pyoverlay" in err


def test_overlay_without_the_etcd_store_is_refused(plugin: Plugin) -> None:
    _pool(plugin, "10.83.0.0/16")
    err = plugin.err("NetworkDriver.CreateNetwork", _overlay("d" * 64, "10.83.0.0/16", "10.83.0.1/16"), 400)
    assert "overlay networks need the etcd cluster store" in err and "--store etcd" in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PYOVERLAY_ADVERTISE_ADDR": "203.0.113.9"}, "203.0.113.9 is not an address of this host"),
        ({"PYOVERLAY_ADVERTISE_ADDR": "nosuch0"}, "'nosuch0' is neither an IP address nor an interface"),
        ({"PYOVERLAY_ADVERTISE_ADDR": ""}, "no default route to take the VTEP address from"),
        ({"PYOVERLAY_ETCD_ENDPOINTS": "127.0.0.1:2379"}, "is not an etcd client URL"),
    ],
)
def test_bad_cluster_settings_stop_the_driver_with_one_line(
    plugin: Plugin, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    drv = DriverProcess(plugin.ns, tmp_path, tmp_path / "state", tmp_path / "d.log")
    proc = subprocess.run(plugin.ns.cmd(*drv.argv()), capture_output=True, text=True, timeout=30, check=False,
                          env=_env(DEAD_ETCD | env))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
