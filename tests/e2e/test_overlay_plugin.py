"""One overlay network across two hosts (20.10 and 28.5) run by the managed (v2) plugin.

The plugin is the one tests/e2e/test_managed_plugin.py builds (cached while the tree is
unchanged), configured only through `docker plugin set` keys: the etcd store, its
endpoints, the advertise address and the host TTL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.lab import PLUGIN_NAME, LabSession, PluginImage, engine_path
from tests.lab.multihost import HostNode, MultiHost

pytestmark = pytest.mark.multihost(driver=False)

NET = ("-d", PLUGIN_NAME, "--ipam-driver", PLUGIN_NAME, "-o", "mode=overlay", "-o", "overlay=mp")


@pytest.fixture(scope="session")
def plugin_image(lab_session: LabSession) -> PluginImage:
    return PluginImage(lab_session.base / "plugin-image")


@pytest.fixture(scope="module")
def hosts(multihost: MultiHost, plugin_image: PluginImage) -> Iterator[list[HostNode]]:
    pair = [multihost[0], multihost[1]]
    for h in pair:
        h.cli("plugin", "create", PLUGIN_NAME, str(plugin_image.ensure(h.engine)), timeout=300)
        state = h.engine.dir / "plugin-state"
        state.mkdir(mode=0o700)
        h.cli(
            "plugin", "set", PLUGIN_NAME, f"state.source={engine_path(h.engine, state)}",
            f"docker.source={engine_path(h.engine, h.engine.api_socket)}",
            "PYOVERLAY_STORE=etcd", f"PYOVERLAY_ETCD_ENDPOINTS={multihost.etcd_endpoints}",
            f"PYOVERLAY_ADVERTISE_ADDR={h.ip}", "PYOVERLAY_HOST_TTL=5", "PYOVERLAY_LOG_LEVEL=debug",
        )  # fmt: skip
        h.cli("plugin", "enable", PLUGIN_NAME, timeout=120)
    yield pair
    # containers and networks before the plugin, which the network needs to go
    multihost.clean()


def test_overlay_across_hosts_with_the_managed_plugin(hosts: list[HostNode], multihost: MultiHost) -> None:
    h1, h2 = hosts
    for h in hosts:
        h.cli("network", "create", *NET, "--subnet", "10.67.0.0/16", "mp")
    h1.run_container("m1", "--network", "mp")
    h2.run_container("m2", "--network", "mp")
    ip1, ip2 = h1.container_ip("m1"), h2.container_ip("m2")
    dev = "pov" + h2.cli("network", "inspect", "-f", "{{.Id}}", "mp").stdout.strip()[:12]
    mac1 = h1.container_mac("m1")
    deadline = time.monotonic() + 10
    while mac1 not in h2.fdb(dev) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h2.fdb(dev).get(mac1) == h1.ip
    assert h1.ping("m1", ip2) and h2.ping("m2", ip1)
    assert h1.container_iface("m1")["mtu"] == h2.container_iface("m2")["mtu"] == 1350
    for h, c in ((h1, "m1"), (h2, "m2")):
        h.cli("rm", "-f", c)
        h.cli("network", "rm", "mp")
    left = multihost.etcdctl("get", "--prefix", "/pyoverlay/", "--keys-only").stdout.split()
    assert [k for k in left if not k.startswith("/pyoverlay/hosts/")] == []
