"""pyoverlay as a managed (v2) plugin on a real dockerd (20.10 and 28.5).

The plugin is built from the work tree with scripts/build-plugin on an offline base
image (tests/lab/plugin_image.py; cached across sessions while the tree is unchanged),
then each engine goes through: `plugin create` → `set` → `enable` (socket listening well
inside dockerd's 9.5 s dial window) → network with pyoverlay as driver *and* IPAM → two
containers ping by name → `disable -f` / `enable` with the state kept in the bind-mounted
state directory → a new container joins → everything removed, nothing left in the
engine's netns.

The tests run in file order and share the module's plugin.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import Servers, ask
from tests.lab import PLUGIN_NAME, Engine, LabSession, PluginImage, engine_path, iptables_save, links, plugin_socket

pytestmark = pytest.mark.lab(driver=False)

log = logging.getLogger("lab")

NET = "mpnet"
SUBNET = "10.62.0.0/24"
# dockerd dials a started plugin at 0.5, 3.5, 6.5 and 9.5 s, then disables it (PROTOCOL §9.2).
DIAL_DEADLINE = 9.5
SOCKET_BUDGET = 5.0  # what we require, with room for a loaded machine


@dataclass
class Installed:
    engine: Engine
    id: str
    state: Path  # the host directory bind-mounted at /var/lib/pyoverlay in the plugin
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return plugin_socket(self.engine, self.id)

    def records(self, kind: str) -> list[str]:
        """Names of the driver's stored records of `kind` (network, endpoint, pool)."""
        d = self.state / "store" / kind
        return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def _connectable(path: Path) -> bool:
    """Whether `path` accepts a connection; it is too long for sun_path (`<plugins_dir>/<64 hex>/…`),
    so it is reached through a descriptor of its directory."""
    try:
        dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(f"/proc/self/fd/{dirfd}/{path.name}")
        return True
    except OSError:
        return False
    finally:
        os.close(dirfd)


def enable_timed(p: Installed, deadline: float = 15.0) -> tuple[float | None, float]:
    """`plugin enable`, while polling the socket: (seconds until it accepted, seconds enable took)."""
    ready: list[float] = []
    done = threading.Event()
    t0 = time.monotonic()

    def poll() -> None:
        while not done.is_set() and time.monotonic() - t0 < deadline:
            if _connectable(p.socket):
                ready.append(time.monotonic() - t0)
                return
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        p.engine.cli("plugin", "enable", PLUGIN_NAME, timeout=120)
        took = time.monotonic() - t0
    finally:
        poller.join(deadline + 1)
        done.set()
    return (ready[0] if ready else None), took


def enabled(engine: Engine) -> bool:
    return engine.cli("plugin", "inspect", "-f", "{{.Enabled}}", PLUGIN_NAME).stdout.strip() == "true"


def sh(engine: Engine, container: str, cmd: str) -> str:
    return engine.cli("exec", container, "sh", "-c", cmd).stdout


def pings(engine: Engine, container: str, target: str) -> bool:
    return engine.cli("exec", container, "ping", "-c1", "-W2", target, check=False).returncode == 0


def run_bb(engine: Engine, name: str) -> None:
    engine.cli("run", "-d", "--name", name, "--network", NET, "bb", "sleep", "3600")


def plugin_pids(engine: Engine) -> list[int]:
    """Processes in the engine's netns running the plugin's entrypoint."""
    found = []
    for pid in engine.netns.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"/opt/pyoverlay/bin/pyoverlay" in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def ours(engine: Engine) -> list[str]:
    return [ln.name for ln in links(engine.netns) if ln.name.startswith("po")]


def chains(engine: Engine) -> list[str]:
    rules = iptables_save(engine.netns) + iptables_save(engine.netns, v6=True)
    return [ln for ln in rules.splitlines() if "PYOVERLAY" in ln]


@pytest.fixture(scope="session")
def plugin_image(lab_session: LabSession) -> PluginImage:
    """Builds the plugin dir once per session (or takes it from the cache)."""
    return PluginImage(lab_session.base / "plugin-image")


@pytest.fixture(scope="module")
def plugin(engine: Engine, plugin_image: PluginImage) -> Iterator[Installed]:
    """The plugin created (not enabled) on the module's engine, its state dir set to a lab dir."""
    t0 = time.monotonic()
    plugin_dir = plugin_image.ensure(engine)
    timings: dict[str, Any] = {"plugin_dir": round(time.monotonic() - t0, 2)}
    if plugin_image.built_on is engine:
        timings |= {f"build.{k}": v for k, v in plugin_image.timings.items()}
    t0 = time.monotonic()
    engine.cli("plugin", "create", PLUGIN_NAME, str(plugin_dir), timeout=300)
    timings["create"] = round(time.monotonic() - t0, 2)
    plugin_id = engine.cli("plugin", "inspect", "-f", "{{.Id}}", PLUGIN_NAME).stdout.strip()
    # Never the host's /var/lib/pyoverlay. The source must exist: runc refuses a missing one.
    state = engine.dir / "plugin-state"
    state.mkdir(mode=0o700)
    engine.cli("plugin", "set", PLUGIN_NAME, f"state.source={engine_path(engine, state)}",
               f"docker.source={engine_path(engine, engine.api_socket)}", "PYOVERLAY_LOG_LEVEL=debug")  # fmt: skip
    p = Installed(engine, plugin_id, state, timings)
    yield p
    log.info("managed plugin on dockerd %s: %s", engine.kind, json.dumps(p.timings))
    _cleanup(engine)


def _cleanup(engine: Engine) -> None:
    """After a failed test: containers, then the network (needs the plugin enabled), then the plugin."""
    if engine.cli("plugin", "inspect", PLUGIN_NAME, check=False).returncode != 0:
        return
    ids = engine.cli("ps", "-aq").stdout.split()
    if ids:
        engine.cli("rm", "-f", *ids, check=False)
    if engine.cli("network", "inspect", NET, check=False).returncode == 0:
        if not enabled(engine):
            engine.cli("plugin", "enable", PLUGIN_NAME, check=False, timeout=60)
        engine.cli("network", "rm", NET, check=False, timeout=60)
    engine.cli("plugin", "rm", "-f", PLUGIN_NAME, check=False, timeout=60)


def test_enable_listens_quickly(plugin: Installed) -> None:
    e = plugin.engine
    config = json.loads(e.cli("plugin", "inspect", "-f", "{{json .Config}}", PLUGIN_NAME).stdout)
    assert sorted(config["Interface"]["Types"]) == ["docker.ipamdriver/1.0", "docker.networkdriver/1.0"]
    assert config["Interface"]["Socket"] == "pyoverlay.sock"
    assert config["Network"]["Type"] == "host"
    assert not enabled(e)

    # dockerd does not create a missing bind-mount source: the plugin does not start.
    real = engine_path(e, plugin.state)
    e.cli("plugin", "set", PLUGIN_NAME, f"state.source={real}-missing")
    refused = e.cli("plugin", "enable", PLUGIN_NAME, check=False, timeout=60)
    assert refused.returncode != 0 and "no such file or directory" in refused.stderr
    assert not enabled(e)
    e.cli("plugin", "set", PLUGIN_NAME, f"state.source={real}")

    ready, took = enable_timed(plugin)
    plugin.timings |= {"enable_to_socket": ready and round(ready, 2), "enable": round(took, 2)}
    assert ready is not None, f"{plugin.socket} never accepted a connection"
    assert ready < SOCKET_BUDGET, f"listening {ready:.1f}s after enable (dockerd gives up at {DIAL_DEADLINE}s)"
    assert enabled(e)
    assert len(plugin_pids(e)) == 1, "the plugin runs in dockerd's netns (network.type host)"
    assert (plugin.state / "lock").exists(), "the plugin's state directory is the bind-mounted host directory"


def test_containers_ping_by_name(plugin: Installed) -> None:
    e = plugin.engine
    t0 = time.monotonic()
    net_id = e.cli("network", "create", "-d", PLUGIN_NAME, "--ipam-driver", PLUGIN_NAME,
                   "--subnet", SUBNET, NET).stdout.strip()  # fmt: skip
    run_bb(e, "mpa")
    run_bb(e, "mpb")
    plugin.timings["network_and_2_containers"] = round(time.monotonic() - t0, 2)
    assert pings(e, "mpa", "mpb") and pings(e, "mpb", "mpa")
    assert pings(e, "mpa", "10.62.0.1"), "the gateway on the plugin's bridge answers"
    assert "10.62.0.2/24" in sh(e, "mpa", "ip -o -4 addr show eth0")
    assert f"po-{net_id[:12]}" in ours(e), "the bridge is in dockerd's netns (network.type host)"
    assert f"{net_id}.json" in plugin.records("network"), "state written through the bind mount"
    assert len(plugin.records("endpoint")) == 2


def test_published_port_on_loopback(plugin: Installed) -> None:
    """/proc/sys is read-only in a plugin: route_localnet must come over netlink."""
    e = plugin.engine
    e.cli("run", "-d", "--name", "mpp", "--network", NET, "-p", "127.0.0.1:8090:80", "bb", "sleep", "3600")
    servers = Servers()
    try:
        servers.start(e.container_netns("mpp"), "tcp", 80, "web")
        assert (ask(str(e.netns.path), "tcp", "127.0.0.1", 8090) or "").startswith("web saw")
    finally:
        servers.stop()
        e.cli("rm", "-f", "mpp")


def test_state_survives_disable_enable(plugin: Installed) -> None:
    e = plugin.engine
    e.cli("plugin", "disable", "-f", PLUGIN_NAME, timeout=60)
    assert not enabled(e)
    assert not _connectable(plugin.socket)
    assert plugin_pids(e) == []
    assert pings(e, "mpa", "mpb"), "containers keep their links while the plugin is down"
    assert len(plugin.records("endpoint")) == 2

    ready, took = enable_timed(plugin)
    plugin.timings |= {"reenable_to_socket": ready and round(ready, 2), "reenable": round(took, 2)}
    assert ready is not None and ready < SOCKET_BUDGET
    run_bb(e, "mpc")  # CreateEndpoint/Join on a network the new process only knows from disk
    assert pings(e, "mpc", "mpa") and pings(e, "mpa", "mpc")
    assert pings(e, "mpb", "mpa")
    assert "10.62.0.4/24" in sh(e, "mpc", "ip -o -4 addr show eth0"), "IPAM kept the used addresses"


def test_removal_leaves_nothing(plugin: Installed) -> None:
    e = plugin.engine
    e.cli("rm", "-f", "mpa", "mpb", "mpc")
    e.cli("network", "rm", NET)
    assert ours(e) == []
    assert plugin.records("network") == [] and plugin.records("endpoint") == []
    e.cli("plugin", "disable", PLUGIN_NAME, timeout=60)  # no -f: nothing uses it any more
    e.cli("plugin", "rm", PLUGIN_NAME, timeout=60)
    assert e.cli("plugin", "ls", "-q").stdout.split() == []
    assert not plugin.socket.exists()
    assert plugin_pids(e) == []
    assert ours(e) == []
    assert chains(e) == []
