import socket
from pathlib import Path

import pytest

from driver.cli import StartupError, bind_socket, lock_state_dir, main


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "po.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # file left behind, nobody listening
    sock = bind_socket(path)
    try:
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        probe.close()
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        sock.close()


def test_live_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "po.sock"
    live = bind_socket(path)
    try:
        with pytest.raises(StartupError, match="another pyoverlay is already serving"):
            bind_socket(path)
    finally:
        live.close()


def test_too_long_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="longer than 107 bytes"):
        bind_socket(tmp_path / ("x" * 120))


def test_state_dir_lock_is_exclusive(tmp_path: Path) -> None:
    held = lock_state_dir(tmp_path / "state")
    try:
        with pytest.raises(StartupError, match=r"in use by another pyoverlay \(pid \d+\)"):
            lock_state_dir(tmp_path / "state")
    finally:
        held.close()
    lock_state_dir(tmp_path / "state").close()


def test_main_reports_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = bind_socket(tmp_path / "po.sock")
    try:
        rc = main(["serve", "--socket", str(tmp_path / "po.sock"), "--state-dir", str(tmp_path / "s")])
    finally:
        live.close()
    assert rc == 1
    assert "another pyoverlay is already serving" in capsys.readouterr().err
