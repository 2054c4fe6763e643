"""``pyoverlay serve``: bind the socket first, then import and start everything else.

dockerd dials a managed plugin's socket within 0.5-9.5 s of starting it and a legacy
lookup that misses costs 15 s, while importing FastAPI, pydantic and pyroute2 takes most
of a second. So the socket is bound and listening with the standard library alone,
before any of that: dockerd's connections queue in the backlog until the app is ready.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import signal
import socket
import sys
from pathlib import Path
from typing import IO

from driver.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR

MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


class StartupError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyoverlay", description="Docker network + IPAM driver")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the driver on a Unix socket")
    serve.add_argument("--socket", help=f"socket path (env PYOVERLAY_SOCKET, default {DEFAULT_SOCKET})")
    serve.add_argument("--state-dir", help=f"state directory (env PYOVERLAY_STATE_DIR, default {DEFAULT_STATE_DIR})")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="env PYOVERLAY_LOG_LEVEL, default info"
    )
    cluster = serve.add_argument_group("cluster store (overlay networks)")
    for flag, text in _CLUSTER_FLAGS.items():
        cluster.add_argument(flag, help=f"{text} (env PYOVERLAY_{flag[2:].replace('-', '_').upper()})")
    return p


_CLUSTER_FLAGS = {
    "--store": "local (default: the embedded store) or etcd (needed by overlay networks)",
    "--etcd-endpoints": "etcd client URLs, comma-separated: http(s)://HOST:PORT[,...]",
    "--etcd-ca": "CA certificate to verify etcd with",
    "--etcd-cert": "client certificate for etcd",
    "--etcd-key": "client key for etcd",
    "--etcd-prefix": "key prefix in etcd (default /pyoverlay)",
    "--advertise-addr": "this host's VTEP address, an IP or an interface (default: the default route's source)",
    "--host-ttl": "seconds a host stays in the cluster after its last lease renewal (default 15)",
    "--vxlan-port": "UDP port of the VXLAN tunnels (default 4789)",
    "--resync-interval": "seconds between full re-checks of peers and of this host's records (default 30)",
}


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the state directory for the life of the process."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = open(state_dir / "lock", "a+")  # noqa: SIM115 - held open until exit
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        raise StartupError(f"state directory {state_dir} is in use by another pyoverlay (pid {holder})") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def bind_socket(path: Path) -> socket.socket:
    """Listen on ``path``; replace a stale socket file, refuse if someone answers on it."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise StartupError(f"socket path {path} is longer than {MAX_UNIX_PATH} bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _answers(path):
            raise StartupError(f"another pyoverlay is already serving on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        raise StartupError(f"cannot check socket {path}: {err.strerror}") from None
    finally:
        probe.close()
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    socket_path = Path(args.socket or os.environ.get("PYOVERLAY_SOCKET") or DEFAULT_SOCKET)
    state_dir = Path(args.state_dir or os.environ.get("PYOVERLAY_STATE_DIR") or DEFAULT_STATE_DIR)
    try:
        lock = lock_state_dir(state_dir)
        sock = bind_socket(socket_path)
    except (StartupError, OSError) as err:
        print(f"pyoverlay: {err}", file=sys.stderr)
        return 1
    inode = os.stat(socket_path).st_ino
    # Until uvicorn installs its own handlers, a SIGTERM must still unwind through the
    # finally below, or the socket file would be left for the next start to clean up.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    overrides: dict[str, object] = {"socket": socket_path, "state_dir": state_dir}
    for flag in ("--log-level", *_CLUSTER_FLAGS):
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    try:
        from driver.config import SettingsError
        from driver.server import serve

        try:
            return serve(sock, overrides)
        except SettingsError as err:
            print(f"pyoverlay: {err}", file=sys.stderr)
            return 2
    finally:
        _unlink_if_ours(socket_path, inode)
        sock.close()
        lock.close()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _unlink_if_ours(path: Path, inode: int) -> None:
    # Only remove the file if it is still the socket we bound, not a successor's.
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass
