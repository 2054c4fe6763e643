"""Startup: socket ready well under a second, stale sockets replaced, live ones refused,
socket and state directory root's only."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

from tests.lab import DriverProcess
from tests.plugin import Plugin


def test_socket_listens_well_under_a_second(plugin: Plugin) -> None:
    plugin.close()
    plugin.driver.stop()
    start = time.monotonic()
    proc = subprocess.Popen(plugin.ns.cmd(*plugin.driver.argv()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(plugin.driver.socket_path))
                    break
                except OSError:
                    assert time.monotonic() - start < 5, "socket never came up"
                    time.sleep(0.005)
        elapsed = time.monotonic() - start
        assert elapsed < 1.0, f"socket took {elapsed:.2f}s"
    finally:
        proc.terminate()
        proc.wait(10)
    assert not plugin.driver.socket_path.exists(), "socket file left behind after SIGTERM"


def test_stale_socket_is_replaced_after_kill9(plugin: Plugin) -> None:
    plugin.close()
    plugin.driver.kill9()
    assert plugin.driver.socket_path.exists()
    plugin.driver.start()
    assert plugin.ok("Plugin.Activate")


def test_second_instance_is_refused(plugin: Plugin, tmp_path: Path) -> None:
    other = DriverProcess(plugin.ns, plugin.driver.socket_path.parent, tmp_path / "other-state", tmp_path / "o.log")
    proc = subprocess.run(plugin.ns.cmd(*other.argv()), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "another pyoverlay is already serving on" in proc.stderr
    same_state = DriverProcess(plugin.ns, tmp_path, plugin.driver.state_dir, tmp_path / "s.log")
    proc = subprocess.run(plugin.ns.cmd(*same_state.argv()), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "is in use by another pyoverlay" in proc.stderr
    assert plugin.ok("Plugin.Activate")  # the first one is unharmed


def _mode_owner(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return f"{stat.S_IMODE(st.st_mode):04o}", st.st_uid, st.st_gid


def _start_with_umask(plugin: Plugin, umask: int) -> None:
    # The driver inherits it: 0 makes every file it creates world-writable unless it
    # sets the mode itself.
    old = os.umask(umask)
    try:
        plugin.driver.start()
    finally:
        os.umask(old)


def test_socket_and_new_state_dir_are_root_only(plugin: Plugin, tmp_path: Path) -> None:
    plugin.close()
    plugin.driver.stop()
    shutil.rmtree(plugin.driver.state_dir)
    metrics = tmp_path / "metrics.sock"
    plugin.driver.extra_args += ["--metrics-socket", str(metrics)]
    _start_with_umask(plugin, 0)
    assert plugin.ok("Plugin.Activate")
    assert _mode_owner(plugin.driver.socket_path) == ("0600", 0, 0)
    assert stat.S_ISSOCK(plugin.driver.socket_path.stat().st_mode)
    assert _mode_owner(metrics) == ("0600", 0, 0)
    assert _mode_owner(plugin.driver.state_dir) == ("0700", 0, 0)
    assert "was open to others" not in plugin.driver.log_path.read_text()  # nothing to tighten


def test_existing_state_dir_is_tightened(plugin: Plugin) -> None:
    plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "10.64.0.0/24"})
    plugin.close()
    plugin.driver.stop()
    state = plugin.driver.state_dir
    os.chown(state, 1, 1)
    state.chmod(0o755)
    _start_with_umask(plugin, 0o022)
    plugin.wait_ready()  # the socket listens before logging is set up
    assert _mode_owner(state) == ("0700", 0, 0)
    assert _mode_owner(plugin.driver.socket_path) == ("0600", 0, 0)
    log = plugin.driver.log_path.read_text()
    assert f"state directory {state} was open to others: owner 1:1 -> 0:0, mode 0755 -> 0700" in log
    # the records in it are still the driver's: the pool survived the restart
    wider = {"AddressSpace": "PyoverlayLocal", "Pool": "10.64.0.0/16"}
    assert "overlaps pool 10.64.0.0/24" in plugin.err("IpamDriver.RequestPool", wider)
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": "PyoverlayLocal/10.64.0.0/24"})
    plugin.close()
    plugin.driver.stop()
    _start_with_umask(plugin, 0o022)
    plugin.wait_ready()
    tail = plugin.driver.log_path.read_text()[len(log):]
    assert "was open to others" not in tail  # once tightened, nothing more to say
