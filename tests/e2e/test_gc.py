"""Networks and endpoints dockerd dropped without telling the driver are collected.

dockerd forgets a network whose DeleteNetwork the driver died in (the retry arrives with
an empty body, moby/moby#33412), and endpoints whose live-restore failed. Here the
driver is handed objects dockerd never knew of, straight over its socket: the same
state as after such a loss. The driver reads the Docker API every second
(``--gc-interval 1``) and deletes them after two reads; what dockerd lists stays.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.lab import DriverProcess, Engine, links

pytestmark = pytest.mark.lab()


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def ours(e: Engine) -> set[str]:
    return {ln.name for ln in links(e.netns) if ln.name.startswith("po")}


def test_what_dockerd_does_not_have_is_collected_and_what_it_has_stays(
    clean_engine: Engine, driver: DriverProcess
) -> None:
    e = clean_engine
    driver.extra_args = ["--docker-host", f"unix://{e.api_socket}", "--gc-interval", "1"]
    driver.restart()
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.90.0.0/24", "kept")
    e.cli("run", "-d", "--name", "k1", "--network", "kept", "bb", "sleep", "3600")
    kept = e.cli("network", "inspect", "-f", "{{.Id}}", "kept").stdout.strip()
    # a network and an endpoint dockerd never heard of
    lost = "f" * 64
    status, _ = driver.post("NetworkDriver.CreateNetwork", {
        "NetworkID": lost, "Options": {"com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "x", "Pool": "10.91.0.0/24", "Gateway": "10.91.0.1/24"}], "IPv6Data": [],
    })  # fmt: skip
    assert status == 200
    status, _ = driver.post("NetworkDriver.CreateEndpoint", {
        "NetworkID": kept, "EndpointID": "e" * 64, "Interface": {"Address": "10.90.0.200/24"}, "Options": {},
    })  # fmt: skip
    assert status == 200
    assert {f"po-{lost[:12]}", f"poh{'e' * 12}"} <= ours(e)
    wait_for("the lost network and endpoint are collected",
             lambda: not {f"po-{lost[:12]}", f"poh{'e' * 12}"} & ours(e))  # fmt: skip
    # what dockerd has is untouched, and works
    assert f"po-{kept[:12]}" in ours(e)
    assert e.cli("exec", "k1", "ping", "-c1", "-W2", "10.90.0.1", check=False).returncode == 0
    log = driver.log_path.read_text()
    assert f"network {lost[:12]}: dockerd no longer has it" in log
    assert f"network {kept[:12]}: dockerd no longer has it" not in log
