"""One dockerd "host": own netns, own persistent mount namespace, own /run/docker/plugins."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .netns import Netns
from .proc import LabError, log, run, signal_pids, tail, terminate_pids, wait_pids

ENGINE_KINDS = ("20.10", "28.5")
# The 28.x CLI negotiates down to API 1.41 but refuses `run --mac-address` there (LAB §1): use 20.10's.
# Without a 28.x CLI (only docker.io installed) "28" falls back to the 20.10 one, which speaks to both.
DOCKER_CLIS = {"28": os.environ.get("PYOVERLAY_E2E_DOCKER_CLI", "/usr/local/bin/docker"), "20.10": "/usr/bin/docker"}
DOCKERD_2010 = "/usr/sbin/dockerd"
# `docker import` gives an image without ENV; real images carry PATH, so give bb one too.
BB_PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where the engine's work dir appears inside the 28.5 rootfs (on the per-engine /run tmpfs).
SID_WORKDIR = "/run/po"


def _http_ping(sock_path: Path, timeout: float = 1.0) -> bool:
    """GET /_ping on a unix socket; True on HTTP 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fspath(sock_path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = s.recv(64).split(b"\r\n", 1)[0]
            return status.startswith(b"HTTP/1.") and b" 200" in status
    except OSError:
        return False


class Engine:
    """A dockerd in `netns`, in a mount namespace that is created once and re-entered on every start.

    The persistent mount namespace (LAB §8) keeps sandbox netns mounts across a
    restart, so `live_restore=True` engines keep working containers. It also
    carries the private `/run` (tmpfs: exec-root, containerd shim sockets,
    `/run/docker/plugins` bound to `plugins_dir`). For 28.5 the namespace is
    pivoted into the sid rootfs (LAB §16 used chroot, but then `docker exec`
    lands outside the container: runc's setns gets the namespace root, not the
    chroot).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        netns: Netns,
        workdir: Path,
        mntns_file: Path,
        *,
        rootfs: Path | None = None,
        image_tar: Path | None = None,
        cgroup_parent: str | None = None,
        live_restore: bool = False,
        extra_args: Sequence[str] = (),
        daemon_config: dict[str, Any] | None = None,
        start_timeout: float = 60.0,
        path_prepend: Sequence[str] = (),
    ) -> None:
        if kind not in ENGINE_KINDS:
            raise ValueError(f"engine kind must be one of {ENGINE_KINDS}, not {kind!r}")
        if kind == "28.5" and rootfs is None:
            raise ValueError("a 28.5 engine needs the sid rootfs")
        self.kind = kind
        self.name = name
        self.netns = netns
        self.dir = workdir
        self.mntns_file = mntns_file
        self.rootfs = rootfs
        self.image_tar = image_tar
        self.cgroup_parent = cgroup_parent
        self.live_restore = live_restore
        self.extra_args = list(extra_args)
        self.daemon_config = dict(daemon_config or {})
        self.start_timeout = start_timeout
        # Directories put in front of dockerd's PATH (settable before start), e.g. one whose
        # `iptables` links to iptables-legacy: a legacy-backend engine without touching the
        # host's update-alternatives.
        self.path_prepend = list(path_prepend)
        self.plugins_dir = workdir / "plugins"
        self.data_dir = workdir / "data"
        self.api_socket = workdir / "docker.sock"
        self.log_path = workdir / "dockerd.log"
        self.timings: dict[str, list[float]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._mntns_ready = False
        self._image_imported = False
        self._clients: list[Any] = []
        self.started_pids: list[int] = []  # dockerd and its containerd, for leftover checks
        self.config_path = workdir / "daemon.json"
        for d in (self.plugins_dir, self.data_dir, workdir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Engine({self.kind!r}, {self.name!r}, netns={self.netns.name!r}, pid={self.pid})"

    # ----------------------------------------------------------------- state
    @property
    def pid(self) -> int | None:
        """dockerd's PID while it runs (nsenter execs, so it is the Popen PID)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def host_url(self) -> str:
        return f"unix://{self.api_socket}"

    def _record(self, what: str, seconds: float) -> None:
        self.timings.setdefault(what, []).append(round(seconds, 3))

    # ------------------------------------------------------- mount namespace
    def _mount_setup_script(self) -> str:
        q = shlex.quote
        if self.kind == "20.10":
            # tmpfs /run hides the host's /run (a system containerd socket there would be shared,
            # LAB §1) and gives a private /run/docker/plugins without creating it on the host.
            lines = [
                "mount -t tmpfs -o mode=755 tmpfs /run",
                # A sysfs shows the netns of whoever mounts it: this script runs in the engine's netns,
                # so dockerd sees its own /sys/class/net. The cgroup tree is carried over.
                "mkdir /run/.po-cgroup",
                "mount --rbind /sys/fs/cgroup /run/.po-cgroup",
                "mount -t sysfs sysfs /sys",
                "mount --move /run/.po-cgroup /sys/fs/cgroup",
                "rmdir /run/.po-cgroup",
                "mkdir -p /run/docker/plugins",
                f"mount --bind {q(str(self.plugins_dir))} /run/docker/plugins",
            ]
        else:
            r = q(str(self.rootfs))
            lines = [
                # '/' must be a mount point, or runc fails: remount /, flags: 0x84000 (LAB §16).
                f"mount --bind {r} {r}",
                # Shared by all 28.5 engines and sessions: nothing may write to it.
                f"mount -o remount,bind,ro {r}",
                f"mount --rbind /proc {r}/proc",
                # sysfs of the engine's netns (see 20.10 above), plus the host's cgroup tree.
                f"mount -t sysfs sysfs {r}/sys",
                f"mount --rbind /sys/fs/cgroup {r}/sys/fs/cgroup",
                f"mount --rbind /dev {r}/dev",
                f"mount -t tmpfs -o mode=755 tmpfs {r}/run",
                f"mount -t tmpfs -o mode=755 tmpfs {r}/opt",  # containerd's "opt" plugin writes there
                # A writable /tmp of the engine's own.
                f"mount --bind {q(str(self.dir / 'tmp'))} {r}/tmp",
                f"mkdir -p {r}/run/docker/plugins {r}{SID_WORKDIR}",
                f"mount --bind {q(str(self.plugins_dir))} {r}/run/docker/plugins",
                f"mount --bind {q(str(self.dir))} {r}{SID_WORKDIR}",
                # The rootfs becomes the namespace root, so whatever enters it (dockerd, runc exec,
                # nsenter) sees sid's /, and the host tree is detached from it.
                f"cd {r}",
                "pivot_root . .po-oldroot",
                "umount -l /.po-oldroot",
            ]
        return "set -e\n" + "\n".join(lines) + "\n"

    def _ensure_mntns(self) -> None:
        """Create the persistent mount namespace (bound at `mntns_file`) once."""
        if self._mntns_ready:
            return
        self.mntns_file.touch()
        run(["unshare", f"--mount={self.mntns_file}", "--propagation", "private", "true"])
        self._mntns_ready = True
        script = self._mount_setup_script()
        run(["nsenter", f"--net={self.netns.path}", f"--mount={self.mntns_file}", "sh", "-c", script])

    def release_mntns(self) -> None:
        """Drop the mount namespace (only once dockerd and its shims are gone)."""
        if self.mntns_file.exists() and _is_mountpoint(self.mntns_file):
            run(["umount", self.mntns_file], check=False)
        self.mntns_file.unlink(missing_ok=True)
        self._mntns_ready = False

    # --------------------------------------------------------------- control
    def dockerd_argv(self) -> list[str]:
        # Paths as dockerd sees them: the host's for 20.10, under SID_WORKDIR inside the sid rootfs.
        w = str(self.dir) if self.kind == "20.10" else SID_WORKDIR
        argv = [
            DOCKERD_2010 if self.kind == "20.10" else "/usr/sbin/dockerd",
            *("--config-file", f"{w}/daemon.json"),
            *("--data-root", f"{w}/data"),
            *("-H", f"unix://{w}/docker.sock"),
            *("--pidfile", f"{w}/docker.pid"),
        ]
        if self.cgroup_parent:
            # Containers land in a cgroup of their own: strays can be found and killed without names.
            argv += ["--cgroup-parent", self.cgroup_parent]
        if self.live_restore:
            argv.append("--live-restore")
        return argv + self.extra_args

    def write_config(self) -> None:
        """daemon.json of our own: the host's /etc/docker/daemon.json must not leak in."""
        config: dict[str, Any] = {}
        if self.kind == "20.10":
            # 20.10 writes a trust key, by default to the host's /etc/docker/key.json.
            config["deprecated-key-path"] = str(self.dir / "key.json")
        self.config_path.write_text(json.dumps(config | self.daemon_config, indent=1) + "\n")

    def start(self, timeout: float | None = None) -> Engine:
        """Start dockerd, wait for the API (bounded), import `bb:latest` on first start."""
        if self.running:
            return self
        self._ensure_mntns()
        self.api_socket.unlink(missing_ok=True)
        self.write_config()
        argv = ["nsenter", f"--net={self.netns.path}", f"--mount={self.mntns_file}", *self.dockerd_argv()]
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%H:%M:%S')} start: {shlex.join(argv)}\n".encode())
            logf.flush()
            t0 = time.monotonic()
            env = None
            if self.path_prepend:
                env = dict(os.environ, PATH=os.pathsep.join([*self.path_prepend, os.environ.get("PATH", "")]))
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                env=env,
            )
        self.started_pids.append(self._proc.pid)
        deadline = t0 + (timeout or self.start_timeout)
        while not _http_ping(self.api_socket):
            if self._proc.poll() is not None:
                raise LabError(
                    f"dockerd {self.kind} ({self.name}) exited with {self._proc.returncode} before its API "
                    f"answered; log tail:\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LabError(
                    f"dockerd {self.kind} ({self.name}) API not up after {timeout or self.start_timeout}s; "
                    f"log tail:\n{tail(self.log_path)}"
                )
            time.sleep(0.03)
        self._record("start_to_api", time.monotonic() - t0)
        self.started_pids += self._children(self._proc.pid)
        log.info("engine %s (%s) pid %s API up in %.2fs", self.name, self.kind, self.pid, time.monotonic() - t0)
        if self.image_tar is not None and not self._image_imported:
            t1 = time.monotonic()
            self.cli("import", "-c", BB_PATH_ENV, "-c", 'CMD ["/bin/sh"]', str(self.image_tar), "bb:latest")
            self._record("import_bb", time.monotonic() - t1)
            self._image_imported = True
        return self

    def _children(self, pid: int) -> list[int]:
        kids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == pid:
                    kids.append(int(entry))
        return kids

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM dockerd by PID and wait (SIGKILL after `timeout`); also waits for its containerd."""
        for c in self._clients:
            # Closing a pooled HTTP session must never block teardown.
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            children = self._children(proc.pid)  # dockerd's own containerd
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("dockerd %s pid %s ignored SIGTERM for %.0fs; SIGKILL", self.name, proc.pid, timeout)
                proc.kill()
                proc.wait(10)
            left = wait_pids(children, 10.0)
            if left:
                terminate_pids(left, 5.0, what=f"containerd of {self.name}")
            self._record("stop", time.monotonic() - t0)
        rc = proc.returncode
        self._proc = None
        return rc

    def restart(self, timeout: float | None = None) -> Engine:
        """Stop and start again in the same mount namespace (sandboxes survive with `live_restore`)."""
        self.stop()
        return self.start(timeout)

    # ---------------------------------------------------------------- client
    def client(self, timeout: int = 120) -> Any:
        """A `docker.DockerClient` for this engine (API version negotiated; 20.10 tops at 1.41)."""
        import docker

        c = docker.DockerClient(base_url=self.host_url, version="auto", timeout=timeout)
        self._clients.append(c)
        return c

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        # Keep the CLI away from the user's contexts/credentials; -H decides the engine.
        env["DOCKER_CONFIG"] = str(self.dir / "cli-config")
        return env

    def cli(
        self,
        *args: str,
        check: bool = True,
        client: str = "28",
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine: `client="28"` (default) or `"20.10"`."""
        try:
            exe = DOCKER_CLIS[client]
        except KeyError:
            raise ValueError(f"client must be one of {sorted(DOCKER_CLIS)}") from None
        if not os.path.exists(exe):
            exe = DOCKER_CLIS["20.10"]
        return run([exe, "-H", self.host_url, *args], check=check, timeout=timeout, input=input, env=self.cli_env())

    def container_pid(self, container: str) -> int:
        return int(self.cli("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())

    def container_netns(self, container: str) -> str:
        """Path usable with `nsenter --net=` / pyroute2 from the host, whatever the engine's mount ns."""
        return f"/proc/{self.container_pid(container)}/ns/net"

    def run_in_mntns(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a command in the engine's netns + mount namespace (sid's / for 28.5)."""
        prefix = ["nsenter", f"--net={self.netns.path}", f"--mount={self.mntns_file}"]
        return run([*prefix, *args], check=check, timeout=timeout)

    def iptables_save(self, v6: bool = False) -> str:
        """The engine's rules, read with the engine's own iptables (sid's 1.8.13 for 28.5)."""
        return self.run_in_mntns("ip6tables-save" if v6 else "iptables-save").stdout

    # -------------------------------------------------------------- teardown
    def remove_objects(self) -> None:
        """Containers, swarm, networks, plugins, volumes: gone (the engine stays up).

        Networks go while their plugin is still there: a prune of a plugin network whose
        plugin is gone waits ~2 min on dockerd's retries."""
        if not self.running:
            return
        ids = self.cli("ps", "-aq", timeout=60).stdout.split()
        if ids:
            self.cli("rm", "-f", *ids, check=False, timeout=120)
        state = self.cli("info", "--format", "{{.Swarm.LocalNodeState}}", check=False).stdout.strip()
        if state not in ("", "inactive"):
            self.cli("swarm", "leave", "--force", check=False, timeout=60)
        self.cli("network", "prune", "-f", check=False, timeout=120)
        for plugin in self.cli("plugin", "ls", "-q", check=False).stdout.split():
            self.cli("plugin", "rm", "-f", plugin, check=False, timeout=60)
        self.cli("volume", "prune", "-f", check=False, timeout=60)

    def cgroup_dirs(self) -> list[Path]:
        """This engine's container cgroup parents, in every mounted hierarchy."""
        if not self.cgroup_parent:
            return []
        rel = self.cgroup_parent.strip("/")
        root = Path("/sys/fs/cgroup")
        cands = [root / rel] + [p / rel for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
        return [p for p in cands if p.is_dir()]

    def cleanup_cgroups(self) -> list[int]:
        """Kill processes left in the engine's container cgroups, rmdir them; return PIDs killed."""
        pids: set[int] = set()
        for d in self.cgroup_dirs():
            for procs in d.rglob("cgroup.procs"):
                try:
                    pids.update(int(x) for x in procs.read_text().split())
                except OSError:
                    continue
        killed = sorted(pids)
        if killed:
            # Container processes are disposable, and a container's PID 1 ignores SIGTERM anyway.
            log.warning("engine %s: killing stray container processes %s", self.name, killed)
            signal_pids(killed, signal.SIGKILL)
            wait_pids(killed, 10.0)
        for d in self.cgroup_dirs():
            # Children before parents: rmdir needs an empty cgroup.
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_quiet(sub)
            _rmdir_quiet(d)
        return killed


def _rmdir_quiet(p: Path) -> None:
    try:
        p.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove cgroup %s: %s", p, e)


def _is_mountpoint(path: Path) -> bool:
    target = os.fspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)
