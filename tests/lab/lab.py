"""Lab bookkeeping: everything created is tracked and torn down in LAB §15 order."""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import assets
from .driver import DriverProcess
from .engine import Engine
from .inspection import mounts_under, netns_list
from .netns import Netns
from .proc import log, pids_alive, process_start_time, run, terminate_pids
from .topology import Lan, Outside, connect_lan, connect_outside

BASE_ROOT = Path("/tmp")
# Set to a directory to keep every lab's dockerd and driver logs after teardown.
KEEP_LOGS_ENV = "PYOVERLAY_E2E_KEEP_LOGS"
OWNER_FILE = "owner"


def _step(errors: list[str], what: str, fn: Callable[[], Any]) -> None:
    """Run one teardown step; log and remember a failure, never raise (later steps must run)."""
    t0 = time.monotonic()
    try:
        fn()
        log.debug("teardown: %s (%.2fs)", what, time.monotonic() - t0)
    except Exception as e:
        msg = f"{what}: {type(e).__name__}: {e}"
        log.error("teardown: %s", msg)
        errors.append(msg)


class LabSession:
    """One per test session: token, base dir `/tmp/po-e2e-<token>/`, shared artefacts, its Labs.

    The token is in every netns name (`po<token>...`) and dir, so parallel or
    crashed earlier runs never collide.
    """

    def __init__(self, root: Path = BASE_ROOT, token: str | None = None) -> None:
        self.token = token or secrets.token_hex(3)
        self.base = root / f"po-e2e-{self.token}"
        self.base.mkdir(parents=True)
        # Lets `python -m tests.lab.reap` tell a crashed session's leftovers from a live one's.
        (self.base / OWNER_FILE).write_text(f"{os.getpid()} {process_start_time(os.getpid())}\n")
        self.netns_prefix = f"po{self.token}"
        self.labs: list[Lab] = []
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._bb_tar: Path | None = None
        self._sid_root: Path | None = None
        self._torn_down = False
        atexit.register(self.teardown)

    def busybox_tar(self) -> Path:
        """The busybox rootfs tarball, built once per session."""
        with self._lock:
            if self._bb_tar is None:
                self._bb_tar = assets.build_busybox_tar(self.base / "bb.tar")
            return self._bb_tar

    def sid_rootfs(self) -> Path:
        """The sid rootfs with dockerd 28.5 (unpacked once into the cache, used read-only)."""
        with self._lock:
            if self._sid_root is None:
                t0 = time.monotonic()
                self._sid_root = assets.cached_rootfs(assets.ensure_sid_tar())
                log.info("sid rootfs %s ready in %.2fs", self._sid_root, time.monotonic() - t0)
            return self._sid_root

    def lab(self, label: str = "l") -> Lab:
        lab = Lab(self, f"{label}{next(self._counter)}")
        self.labs.append(lab)
        return lab

    def leftovers(self) -> dict[str, list[Any]]:
        """What of this session still exists (netns, mounts, recorded processes); empty lists when clean."""
        pids: list[int] = []
        for lab in self.labs:
            pids += lab.recorded_pids()
        return {
            "netns": netns_list(self.netns_prefix),
            "mounts": mounts_under(self.base),
            "pids": pids_alive(pids),
        }

    def teardown(self) -> list[str]:
        """Tear down all labs, then remove the base dir (refused while anything is mounted below it)."""
        if self._torn_down:
            return []
        self._torn_down = True
        errors: list[str] = []
        for lab in reversed(self.labs):
            errors += lab.teardown()
        left = mounts_under(self.base)
        if left:
            # Deepest first; lazy so a busy mount still detaches. rmtree must never cross a mount.
            for mp in sorted(left, key=len, reverse=True):
                _step(errors, f"umount {mp}", functools.partial(run, ["umount", "-l", mp]))
        if mounts_under(self.base):
            errors.append(f"mounts left under {self.base}; not removing it")
        else:
            _step(errors, f"rm {self.base}", lambda: shutil.rmtree(self.base, ignore_errors=False))
        atexit.unregister(self.teardown)
        return errors


class Lab:
    """A set of namespaces, engines and drivers with one teardown (e.g. one test module)."""

    def __init__(self, session: LabSession | None = None, label: str = "l") -> None:
        if session is None:
            session = LabSession()
            session.labs.append(self)
        self.session = session
        self.label = label
        self.dir = session.base / label
        self.dir.mkdir(parents=True)
        self.namespaces: list[Netns] = []
        self.engines: list[Engine] = []
        self.drivers: list[DriverProcess] = []
        self._mnt_dir: Path | None = None
        self._torn_down = False
        atexit.register(self.teardown)

    # ----------------------------------------------------------- creation
    def ns_name(self, name: str) -> str:
        return f"{self.session.netns_prefix}{self.label}-{name}"

    def netns(self, name: str) -> Netns:
        """Create and track netns `po<token><label>-<name>` (lo up)."""
        ns = Netns(self.ns_name(name))
        ns.create()
        self.namespaces.append(ns)
        return ns

    def _mntns_dir(self) -> Path:
        # Binding a mount-namespace file needs a private parent mount (LAB §8).
        if self._mnt_dir is None:
            d = self.dir / "mnt"
            d.mkdir()
            run(["mount", "--bind", d, d])
            self._mnt_dir = d
            run(["mount", "--make-private", d])
        return self._mnt_dir

    def engine(
        self,
        kind: str = "20.10",
        name: str = "h1",
        *,
        live_restore: bool = False,
        extra_args: Sequence[str] = (),
        daemon_config: dict[str, Any] | None = None,
        import_busybox: bool = True,
        start: bool = False,
    ) -> Engine:
        """An engine in a new netns `<name>` (not started unless `start`: start drivers first)."""
        rootfs = self.session.sid_rootfs() if kind == "28.5" else None
        ns = self.netns(name)
        eng = Engine(
            kind,
            name,
            ns,
            self.dir / name,
            self._mntns_dir() / f"{name}.mnt",
            rootfs=rootfs,
            image_tar=self.session.busybox_tar() if import_busybox else None,
            cgroup_parent=f"/po-e2e-{self.session.token}-{self.label}-{name}",
            live_restore=live_restore,
            extra_args=extra_args,
            daemon_config=daemon_config,
        )
        self.engines.append(eng)
        if start:
            eng.start()
        return eng

    def driver(
        self,
        engine: Engine,
        *,
        name: str = "pyoverlay",
        cmd: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start: bool = False,
    ) -> DriverProcess:
        """A driver in `engine`'s netns with its socket in `engine.plugins_dir`."""
        d = self.dir / f"drv-{engine.name}-{name}"
        drv = DriverProcess(
            engine.netns,
            engine.plugins_dir,
            d / "state",
            d.with_suffix(".log"),
            name=name,
            cmd=cmd,
            extra_args=extra_args,
            env=env,
        )
        self.drivers.append(drv)
        if start:
            drv.start()
        return drv

    def outside(self, engine: Engine | Netns, name: str = "out", **kwargs: Any) -> Outside:
        """An outside host beyond `engine`'s uplink (see topology.connect_outside)."""
        ns = engine.netns if isinstance(engine, Engine) else engine
        return connect_outside(ns, self.netns(name), **kwargs)

    def lan(self, engine: Engine | Netns, name: str = "lan", **kwargs: Any) -> Lan:
        """A LAN behind `engine`'s macvlan parent (see topology.connect_lan)."""
        ns = engine.netns if isinstance(engine, Engine) else engine
        return connect_lan(ns, self.netns(name), self.netns(f"{name}h"), **kwargs)

    # ---------------------------------------------------------- bookkeeping
    def copy_logs(self, dest: Path) -> Path:
        """Copy the engine and driver logs to `dest/<token>-<label>/` (they go with the lab dir)."""
        out = dest / f"{self.session.token}-{self.label}"
        out.mkdir(parents=True, exist_ok=True)
        for e in self.engines:
            if e.log_path.exists():
                shutil.copy(e.log_path, out / f"{e.name}-dockerd-{e.kind}.log")
        for d in self.drivers:
            if d.log_path.exists():
                shutil.copy(d.log_path, out / d.log_path.name)
        return out

    def recorded_pids(self) -> list[int]:
        pids: list[int] = []
        for e in self.engines:
            pids += e.started_pids
        for d in self.drivers:
            pids += d.started_pids
        return pids

    def teardown(self) -> list[str]:
        """Docker objects → engines → drivers → strays → netns → mounts → dirs; idempotent, never raises."""
        if self._torn_down:
            return []
        self._torn_down = True
        errors: list[str] = []
        self._stop_processes(errors)
        keep = os.environ.get(KEEP_LOGS_ENV)
        if keep:
            _step(errors, "keep logs", lambda: self.copy_logs(Path(keep)))
        self._remove_namespaces_and_files(errors)
        atexit.unregister(self.teardown)
        if errors:
            log.error("lab %s teardown had %d error(s)", self.label, len(errors))
        return errors

    def _stop_processes(self, errors: list[str]) -> None:
        for e in self.engines:
            _step(errors, f"remove objects on {e.name}", e.remove_objects)
        # Engines before drivers: stopping dockerd still sends Leave/DeleteEndpoint.
        for e in self.engines:
            _step(errors, f"stop engine {e.name}", e.stop)
        for d in self.drivers:
            _step(errors, f"stop driver {d.name}", d.stop)
        for e in self.engines:
            _step(errors, f"cgroups of {e.name}", e.cleanup_cgroups)

    def _remove_namespaces_and_files(self, errors: list[str]) -> None:
        for ns in reversed(self.namespaces):
            _step(errors, f"delete netns {ns.name}", ns.delete)
        left = pids_alive(self.recorded_pids())
        if left:
            errors.append(f"recorded processes still alive after stop: {left}")
            _step(errors, "kill recorded processes", lambda: terminate_pids(left, 5.0, what="leftover"))
        for e in self.engines:
            _step(errors, f"release mount ns of {e.name}", e.release_mntns)
        if self._mnt_dir is not None:
            mnt_dir = self._mnt_dir
            _step(errors, f"umount {mnt_dir}", lambda: run(["umount", mnt_dir]))
        if mounts_under(self.dir):
            errors.append(f"mounts left under {self.dir}: {mounts_under(self.dir)}; not removing it")
        else:
            _step(errors, f"rm {self.dir}", lambda: shutil.rmtree(self.dir))
