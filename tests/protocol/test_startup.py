"""Startup: socket ready well under a second, stale sockets replaced, live ones refused."""

from __future__ import annotations

import socket
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
