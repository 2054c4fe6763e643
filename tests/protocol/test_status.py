"""pyoverlay status, --version and the metrics listener against a running driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.plugin import Plugin

REPO = Path(__file__).resolve().parents[2]
NID, EID = "5" * 64, "6" * 64
POOL = "PyoverlayLocal/10.77.0.0/24"
NET = {
    "NetworkID": NID,
    "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
    "IPv4Data": [{"AddressSpace": "PyoverlayLocal", "Gateway": "10.77.0.1/24", "Pool": "10.77.0.0/24"}],
    "IPv6Data": [],
}


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "driver", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO, check=False)  # fmt: skip


def status(p: Plugin, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("status", "--socket", str(p.driver.socket_path), *extra)


def create_network_and_endpoint(p: Plugin) -> None:
    # In dockerd's order: the pool and its gateway from the IPAM, then the network.
    p.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "10.77.0.0/24", "Options": {},
                                    "V6": False})  # fmt: skip
    p.ok("IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "10.77.0.1",
                                       "Options": {"RequestAddressType": "com.docker.network.gateway"}})  # fmt: skip
    p.ok("NetworkDriver.CreateNetwork", NET)
    p.ok("IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "", "Options": None})
    p.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                          "Interface": {"Address": "10.77.0.2/24"}})  # fmt: skip


def test_version() -> None:
    from driver import __version__

    for args in (["--version"], ["version"]):
        r = cli(*args)
        assert (r.returncode, r.stdout) == (0, f"pyoverlay {__version__}\n"), r
    r = cli()
    assert r.returncode == 2 and "usage: pyoverlay" in r.stderr


def test_status_shows_network_endpoint_and_pool(plugin: Plugin) -> None:
    create_network_and_endpoint(plugin)
    r = status(plugin, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (net,) = doc["networks"]
    assert (net["id"], net["mode"], net["bridge"], net["status"]) == (NID, "bridge", "po-555555555555", "ready")
    assert net["subnets"] == [{"pool": "10.77.0.0/24", "gateway": "10.77.0.1/24"}]
    assert [(e["id"], e["address"], e["interface"]) for e in net["endpoints"]] == [(EID, "10.77.0.2/24",
                                                                                      "poh666666666666")]
    assert doc["pools"] == [{"id": POOL, "pool": "10.77.0.0/24", "range": None, "overlay": None, "held": 2,
                             "size": 256}]  # fmt: skip
    assert doc["startup"] == {"reconciled": True, "failures": []} and doc["cluster"] is None
    table = status(plugin)
    assert table.returncode == 0
    assert "555555555555  bridge  bridge po-555555555555  mtu 1500  10.77.0.0/24 gw 10.77.0.1" in table.stdout
    assert "666666666666  10.77.0.2/24" in table.stdout and "2 / 256" in table.stdout


def test_status_without_a_driver_fails_cleanly(tmp_path: Path) -> None:
    r = cli("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "is the driver running?" in r.stderr


def test_dockerd_never_sees_more_paths() -> None:
    """Exactly one path beyond dockerd's verbs; anything else stays 404 (see test_wire)."""
    from driver.api.routes import VERBS

    assert [v for v in VERBS if not v.startswith(("/Plugin.", "/NetworkDriver.", "/IpamDriver."))] == [
        "/Pyoverlay.Status"
    ]


def _slow_iptables(bin_dir: Path, marker: Path) -> dict[str, str]:
    """iptables-restore (under each name the driver may pick) taking 3 s while ``marker``
    exists: a busy worker, made for the test's driver only (the real one runs after)."""
    bin_dir.mkdir(parents=True)
    for name in ("iptables-restore", "iptables-nft-restore", "iptables-legacy-restore"):
        real = shutil.which(name)
        if real is not None:
            wrapper = bin_dir / name
            wrapper.write_text(f'#!/bin/sh\n[ -e "{marker}" ] && sleep 3\nexec {real} "$@"\n')
            wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_status_answers_while_the_worker_is_busy(make_plugin: Callable[[dict[str, str]], Plugin],
                                                  tmp_path: Path) -> None:  # fmt: skip
    marker = tmp_path / "slow"
    p = make_plugin(_slow_iptables(tmp_path / "bin", marker))
    p.wait_ready()
    p.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "10.77.0.0/24", "Options": {},
                                    "V6": False})  # fmt: skip
    marker.touch()
    outcome: dict[str, Any] = {}
    creating = threading.Thread(target=lambda: outcome.update(r=p.call("NetworkDriver.CreateNetwork", NET)))
    creating.start()
    try:
        time.sleep(0.8)  # CreateNetwork is in the worker, inside the slow iptables-restore
        began = time.monotonic()
        r = status(p, "--json")
        took = time.monotonic() - began
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert [q["verb"] for q in doc["in_flight"]] == ["NetworkDriver.CreateNetwork"]
        assert creating.is_alive(), "the worker was not busy during the status call"
        assert took < 2.0, f"status took {took:.2f}s behind a busy worker"
    finally:
        creating.join(30)
        marker.unlink()
    assert outcome["r"][0] == 200


def _scrape(path: Path) -> dict[tuple[str, str], float]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://metrics", timeout=10) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            name, _, labels = name_labels.partition("{")
            out[(name, labels.rstrip("}"))] = float(value)
    return out


def test_metrics_socket_counts_requests(make_plugin: Callable[[dict[str, str]], Plugin], tmp_path: Path) -> None:
    sock = tmp_path / "m.sock"
    p = make_plugin({"PYOVERLAY_METRICS_SOCKET": str(sock)})
    p.wait_ready()
    before = _scrape(sock)
    assert before[("pyoverlay_reconcile_runs_total", "")] == 1
    assert before[("pyoverlay_reconcile_failures_total", "")] == 0
    for _ in range(5):
        p.ok("Plugin.Activate")
    p.err("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID}, 400)
    create_network_and_endpoint(p)
    after = _scrape(sock)
    activate = ("pyoverlay_requests_total", 'verb="Plugin.Activate"')
    assert after[activate] - before.get(activate, 0) == 5
    assert after[("pyoverlay_request_errors_total", 'verb="NetworkDriver.Join",status="400"')] == 1
    assert after[("pyoverlay_request_duration_seconds_count", 'verb="NetworkDriver.CreateEndpoint"')] == 1
    assert after[("pyoverlay_request_duration_seconds_bucket", 'verb="Plugin.Activate",le="+Inf"')] >= 5
    assert after[("pyoverlay_endpoints", 'network="555555555555"')] == 1
    assert after[("pyoverlay_addresses_in_use", f'pool="{POOL}"')] == 2
    p.close()
    p.driver.stop()
    assert not sock.exists(), "the metrics socket is removed at exit"
