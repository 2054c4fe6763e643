"""The pyoverlay driver process, run in an engine's netns (host mount namespace)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .netns import Netns
from .proc import LabError, log, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
# Override the driver command (e.g. the installed console script): PYOVERLAY_E2E_DRIVER="pyoverlay".
DRIVER_ENV = "PYOVERLAY_E2E_DRIVER"
PLUGIN_ACCEPT = "application/vnd.docker.plugins.v1.2+json"


def driver_available() -> bool:
    return (REPO_ROOT / "driver" / "cli.py").exists() or bool(os.environ.get(DRIVER_ENV))


def default_driver_cmd() -> list[str]:
    if os.environ.get(DRIVER_ENV):
        return shlex.split(os.environ[DRIVER_ENV])
    if (REPO_ROOT / "driver" / "__main__.py").exists():
        return [sys.executable, "-m", "driver"]
    # Same entry point as the console script `pyoverlay = driver.cli:main`.
    return [sys.executable, "-c", "import sys; from driver.cli import main; sys.exit(main())"]


def _connectable(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(os.fspath(path))
        return True
    except OSError:
        return False


class DriverProcess:
    """`pyoverlay serve --socket <plugins_dir>/<name>.sock --state-dir ... --log-level ...` in `netns`.

    Start it before the engine touches the network: dockerd spends 15 s per
    lookup of a missing legacy plugin.
    """

    def __init__(
        self,
        netns: Netns,
        plugins_dir: Path,
        state_dir: Path,
        log_path: Path,
        *,
        name: str = "pyoverlay",
        cmd: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_level: str = "debug",
    ) -> None:
        self.netns = netns
        self.name = name
        self.socket_path = plugins_dir / f"{name}.sock"
        self.state_dir = state_dir
        self.log_path = log_path
        self.base_cmd = list(cmd) if cmd else default_driver_cmd()
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.log_level = log_level
        self.timings: dict[str, list[float]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_pids: list[int] = []
        state_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DriverProcess({self.name!r}, netns={self.netns.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def argv(self) -> list[str]:
        return [
            *self.base_cmd,
            "serve",
            "--socket",
            str(self.socket_path),
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> DriverProcess:
        """Start and wait until the socket accepts a connection (bounded)."""
        if self.running:
            return self
        # A stale socket file would look "present" to dockerd and to the wait below.
        self.socket_path.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        argv = self.netns.cmd(*self.argv())
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%H:%M:%S')} start: {shlex.join(argv)}\n".encode())
            logf.flush()
            t0 = time.monotonic()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        self.started_pids.append(self._proc.pid)
        while not _connectable(self.socket_path):
            if self._proc.poll() is not None:
                raise LabError(
                    f"driver {self.name} exited with {self._proc.returncode} before listening; "
                    f"log tail:\n{tail(self.log_path)}"
                )
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise LabError(f"driver {self.name} not listening after {timeout}s; log tail:\n{tail(self.log_path)}")
            time.sleep(0.05)
        self.timings.setdefault("start_to_socket", []).append(round(time.monotonic() - t0, 3))
        log.info("driver %s pid %s listening in %.2fs", self.name, self.pid, time.monotonic() - t0)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID and wait; SIGKILL if it does not exit in `timeout`. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("driver %s pid %s ignored SIGTERM for %.0fs; SIGKILL", self.name, proc.pid, timeout)
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill9(self) -> None:
        """SIGKILL, as a crash would; the socket file stays behind."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def restart(self, timeout: float = 20.0) -> DriverProcess:
        self.stop()
        return self.start(timeout)

    def post(self, method: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """POST /<method> on the socket as dockerd does (empty Host); returns (status, JSON or text)."""
        import httpx

        data = b"" if body is None else json.dumps(body).encode()
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        with httpx.Client(transport=transport, base_url="http://plugin", timeout=timeout) as c:
            r = c.post(f"/{method.lstrip('/')}", content=data, headers={"Host": "", "Accept": PLUGIN_ACCEPT})
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text
