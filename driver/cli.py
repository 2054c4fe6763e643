"""The ``pyoverlay`` command: ``serve``, and ``status``, ``doctor``, ``version`` beside it.

``serve`` binds the socket first, then imports and starts everything else.

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
import stat
import sys
from pathlib import Path
from typing import IO

from driver import __version__
from driver.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR

MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


class StartupError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyoverlay", description="Docker network + IPAM driver")
    p.add_argument("--version", action="version", version=f"pyoverlay {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the driver on a Unix socket")
    _settings_flags(serve)
    metrics = serve.add_argument_group("metrics (Prometheus text format; off by default)")
    for flag, text in _METRICS_FLAGS.items():
        metrics.add_argument(flag, help=f"{text} (env {_env(flag)})")
    sub.add_parser("version", help="print the version")
    status = sub.add_parser("status", help="what the running driver has: networks, endpoints, pools, peers")
    status.add_argument("--socket", help=f"the driver's socket (env PYOVERLAY_SOCKET, default {DEFAULT_SOCKET})")
    status.add_argument("--json", action="store_true", help="the full answer as JSON")
    doctor = sub.add_parser("doctor", help="check this host for what the driver needs (read-only)")
    _settings_flags(doctor)
    return p


def _settings_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the driver's settings: serve takes them, doctor checks what they say."""
    p.add_argument("--socket", help=f"socket path (env PYOVERLAY_SOCKET, default {DEFAULT_SOCKET})")
    p.add_argument("--state-dir", help=f"state directory (env PYOVERLAY_STATE_DIR, default {DEFAULT_STATE_DIR})")
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="env PYOVERLAY_LOG_LEVEL, default info"
    )
    groups = (("cluster store (overlay networks)", _CLUSTER_FLAGS), ("docker", _DOCKER_FLAGS),
              ("firewall", _FIREWALL_FLAGS))  # fmt: skip
    for title, flags in groups:
        group = p.add_argument_group(title)
        for flag, text in flags.items():
            group.add_argument(flag, help=f"{text} (env {_env(flag)})")


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
    "--forget-host-after": "seconds a member host may be gone before the others free its addresses (default 3600,"
    " 0: never)",
}
_DOCKER_FLAGS = {
    "--docker-host": "dockerd's API, read in the background only (default unix:///var/run/docker.sock)",
    "--gc-interval": "seconds between comparisons with dockerd's networks and endpoints (default 60, 0: off)",
}
_FIREWALL_FLAGS = {
    "--firewall-backend": "auto (the iptables backend dockerd's chains are in), nft or legacy",
    "--firewall-check-interval": "seconds between checks that our rules are intact (default 2, 0: off)",
}
_METRICS_FLAGS = {
    "--metrics-socket": "serve GET /metrics on this Unix socket",
    "--metrics-addr": "serve GET /metrics on this IP:PORT, e.g. 127.0.0.1:9450",
}


def _env(flag: str) -> str:
    return f"PYOVERLAY_{flag[2:].replace('-', '_').upper()}"


def private_dir(path: Path) -> str | None:
    """Make ``path`` a directory only this user (root) can read, write or enter: created
    0700, or an existing one made 0700 and ours. What was changed, for the log, or None.

    It holds every record of networks, endpoints and addresses, and the etcd client key
    when one is kept there (as the managed plugin's settings suggest)."""
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    uid, gid = os.geteuid(), os.getegid()
    changes = []
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        changes.append(f"owner {st.st_uid}:{st.st_gid} -> {uid}:{gid}")
    if stat.S_IMODE(st.st_mode) != 0o700:  # mkdir's mode went through the umask
        os.chmod(path, 0o700)
        changes.append(f"mode {stat.S_IMODE(st.st_mode):04o} -> 0700")
    if not existed or not changes:
        return None
    return f"state directory {path} was open to others: {', '.join(changes)}"


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the state directory for the life of the process."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "lock"
    try:
        path.touch(mode=0o600)
        # Held open read-only: flock works on any open file, and a file open for writing
        # would keep an admin (or the tests) from remounting the state dir read-only.
        f = open(path)  # noqa: SIM115 - held open until exit
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read().strip() or "?"
            f.close()
            raise StartupError(f"state directory {state_dir} is in use by another pyoverlay (pid {holder})") from None
        path.write_text(f"{os.getpid()}\n")
    except OSError as err:
        raise StartupError(f"state directory {state_dir}: {err.strerror} ({err.filename or path})") from None
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
    # Root only: whoever can connect can create networks and firewall rules (dockerd runs
    # as root). Before listen(): until then a connect is refused, so the mode bind gave
    # the file (through the umask) is never usable.
    os.chmod(path, 0o600)
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
    if args.command == "version":
        print(f"pyoverlay {__version__}")
        return 0
    socket_path = Path(args.socket or os.environ.get("PYOVERLAY_SOCKET") or DEFAULT_SOCKET)
    if args.command == "status":
        from driver.ops.status_cli import run

        return run(socket_path, args.json)
    if args.command == "doctor":
        from driver.ops.doctor_cli import run as doctor

        return doctor(_overrides(args, socket_path))
    return _serve(args, socket_path)


def _overrides(args: argparse.Namespace, socket_path: Path) -> dict[str, object]:
    state_dir = Path(args.state_dir or os.environ.get("PYOVERLAY_STATE_DIR") or DEFAULT_STATE_DIR)
    overrides: dict[str, object] = {"socket": socket_path, "state_dir": state_dir}
    flags = ["--log-level", *_CLUSTER_FLAGS, *_DOCKER_FLAGS, *_FIREWALL_FLAGS,
             *(_METRICS_FLAGS if args.command == "serve" else ())]  # fmt: skip
    for flag in flags:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return overrides


def _serve(args: argparse.Namespace, socket_path: Path) -> int:
    overrides = _overrides(args, socket_path)
    state_dir = Path(str(overrides["state_dir"]))
    try:
        note = private_dir(state_dir)
        lock = lock_state_dir(state_dir)
        sock = bind_socket(socket_path)
    except (StartupError, OSError) as err:
        print(f"pyoverlay: {err}", file=sys.stderr)
        return 1
    inode = os.stat(socket_path).st_ino
    # Until uvicorn installs its own handlers, a SIGTERM must still unwind through the
    # finally below, or the socket file would be left for the next start to clean up.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        from driver.config import SettingsError
        from driver.server import serve

        try:
            return serve(sock, overrides, [note] if note else [])
        except SettingsError as err:
            print(f"pyoverlay: {err}", file=sys.stderr)
            return 2
    finally:
        unlink_if_ours(socket_path, inode)
        sock.close()
        lock.close()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def unlink_if_ours(path: Path, inode: int) -> None:
    # Only remove the file if it is still the socket we bound, not a successor's.
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass
