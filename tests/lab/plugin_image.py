"""pyoverlay as a managed (v2) plugin, built offline for the e2e tests (LAB §10.3-10.4).

The chain, each link cached under `CACHE_DIR` (default /var/cache/pyoverlay-test):

1. base: a Debian bookworm rootfs with python3, python3-venv and iptables, made with
   mmdebstrap (~50 s, needs the Debian mirror, once) and `docker import`ed when needed;
2. wheels: the project's dependencies (and pip) for CPython 3.11 / manylinux, downloaded
   once per dependency list, and the build backend (both need PyPI, once); the pyoverlay
   wheel itself is built from the work tree each time it is needed, offline, in ~1 s;
3. plugin dir: `scripts/build-plugin --base <base> --wheels <wheels> --no-create` run
   against a lab engine (`docker build` runs in the engine's netns, which has no uplink)
   gives `config.json` + `rootfs/`, cached under a hash of everything that goes into it
   (Dockerfile, plugin/config.json, the build script, the driver sources, the base recipe,
   the dependency list). A warm run with an unchanged tree builds nothing.

Every engine then gets the plugin with `docker plugin create NAME <plugin dir>`.
Delete `CACHE_DIR/plugin-*` to force fresh downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .assets import CACHE_DIR, flock, mmdebstrap_tar
from .engine import DOCKER_CLIS, SID_WORKDIR, Engine
from .proc import LabError, log, run

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-plugin"
PLUGIN_NAME = "pyoverlay/pyoverlay:latest"
PLUGIN_SOCKET = "pyoverlay.sock"  # interface.socket in plugin/config.json
BASE_IMAGE = "local/pyoverlay-plugin-base:bookworm"

# The base rootfs: Debian's python3 (3.11.2, glibc 2.36) with iptables, so the Dockerfile skips
# apt. Kept small because `docker plugin create` costs ~1 s per 10 MB of rootfs (it gzips and
# unpacks it): the merged-usr hook keeps `usrmerge` (and with it perl) out, and glibc's gconv
# modules go (Python has its own codecs): ~105 MB instead of 164 MB.
# libstdc++6: grpcio (the etcd client) is C++.
BASE_PACKAGES = ("python3", "python3-venv", "iptables", "libstdc++6")
MMDEBSTRAP_ARGS = (
    "--variant=essential",
    f"--include={','.join(BASE_PACKAGES)}",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/lib/*/gconv/*",
    "bookworm",
)
# The image's interpreter, not this host's: binary wheels (pydantic-core) must fit it.
TARGET_PYTHON = "3.11"
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine())
TARGET_PLATFORMS = (f"manylinux2014_{_ARCH}", f"manylinux_2_28_{_ARCH}")
KEEP_ROOTFS = 3  # cached plugin dirs kept (newest first); each is ~150 MB


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


def _pip(*args: str, timeout: float = 600.0) -> None:
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], timeout=timeout)


def _table(name: str, repo: Path = REPO_ROOT) -> dict[str, Any]:
    """A table of pyproject.toml (`project`, `build-system`)."""
    with open(repo / "pyproject.toml", "rb") as f:
        table = tomllib.load(f).get(name, {})
    return table if isinstance(table, dict) else {}


# --------------------------------------------------------------------- base image
def base_tar_path(cache_dir: Path = CACHE_DIR) -> Path:
    """Named after its recipe: changing the packages or options makes a new one."""
    return cache_dir / f"plugin-base-bookworm-{_digest(a.encode() for a in MMDEBSTRAP_ARGS)}.tar"


def ensure_base_tar(cache_dir: Path = CACHE_DIR, timeout: float = 1800.0) -> Path:
    """The base rootfs tarball; made with mmdebstrap when missing (~50 s, needs the mirror)."""
    path = base_tar_path(cache_dir)
    if not path.exists():
        lock = cache_dir / ".plugin-base.lock"
        mmdebstrap_tar(path, ["--quiet", *MMDEBSTRAP_ARGS], lock=lock, timeout=timeout, what="~50 s")
        for old in cache_dir.glob("plugin-base-bookworm-*.tar"):
            if old != path:
                old.unlink(missing_ok=True)  # an older recipe's
    return path


# ------------------------------------------------------------------------- wheels
def source_files(repo: Path = REPO_ROOT) -> list[Path]:
    """What the pyoverlay wheel is built from (relative paths)."""
    files = [Path("pyproject.toml")] + [Path(n) for n in ("README.md",) if (repo / n).exists()]
    files += sorted(
        p.relative_to(repo)
        for p in (repo / "driver").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return files


def _requirements_dir(kind: str, requirements: list[str], cache_dir: Path, *pip_args: str) -> Path:
    """`pip download` of `requirements` into a cache dir named after them (PyPI only the first time)."""
    dest = cache_dir / f"plugin-{kind}-{_digest(a.encode() for a in [*requirements, *pip_args])}"
    if dest.is_dir():
        return dest
    with flock(cache_dir / f".plugin-{kind}.lock"):
        if dest.is_dir():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _pip("download", "-q", "--only-binary=:all:", *pip_args, "-d", str(tmp), *requirements)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_backend_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """The build backend ([build-system] requires) installed into a cache dir, once (needs PyPI then)."""
    requires = list(_table("build-system").get("requires", []))
    dest = cache_dir / f"plugin-build-backend-{_digest(r.encode() for r in requires)}"
    if dest.is_dir():
        return dest
    with flock(cache_dir / ".plugin-build-backend.lock"):
        if dest.is_dir():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _pip("install", "-q", "--only-binary=:all:", "--target", str(tmp), *requires)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def dependency_wheels_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """The project's dependencies and pip, for the image's Python (not this host's)."""
    project = _table("project")
    target = ["--python-version", TARGET_PYTHON, "--implementation", "cp"]
    for plat in TARGET_PLATFORMS:
        target += ["--platform", plat]
    return _requirements_dir("dep-wheels", [*project.get("dependencies", []), "pip"], cache_dir, *target)


def build_project_wheel(dest: Path, repo: Path = REPO_ROOT, cache_dir: Path = CACHE_DIR) -> Path:
    """The pyoverlay wheel, offline and in ~1 s: the PEP 517 backend called directly on a copy of
    the sources (nothing is written into the work tree; `pip wheel` would spend ~6 s on an
    isolated build environment)."""
    src = dest.parent / f".{dest.name}-src"
    shutil.rmtree(src, ignore_errors=True)
    for rel in source_files(repo):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, src / rel)
    backend = str(_table("build-system").get("build-backend", "setuptools.build_meta:__legacy__"))
    module, _, obj = backend.partition(":")
    hook = f"import importlib; b = importlib.import_module({module!r})" + (f".{obj}" if obj else "")
    # -S: no site-packages of this venv, only the cached backend on PYTHONPATH.
    argv = [sys.executable, "-S", "-c", f"{hook}; import sys; print(b.build_wheel(sys.argv[1]))", str(dest)]
    env = dict(os.environ, PYTHONPATH=str(build_backend_dir(cache_dir)))
    try:
        proc = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise LabError(f"building the pyoverlay wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    wheel = dest / proc.stdout.strip().splitlines()[-1]
    if not wheel.is_file():
        raise LabError(f"the build backend reported {wheel.name}, which is not in {dest}")
    return wheel


# ---------------------------------------------------------------------- plugin dir
def plugin_key(repo: Path = REPO_ROOT) -> str:
    """Hash of everything that goes into the plugin dir."""
    parts = [b"deps", dependency_spec().encode(), b"base", base_tar_path().name.encode()]
    for rel in ("Dockerfile", "plugin/config.json", "scripts/build-plugin"):
        parts += [rel.encode(), (repo / rel).read_bytes()]
    for rel_path in source_files(repo):
        parts += [str(rel_path).encode(), (repo / rel_path).read_bytes()]
    return _digest(parts)


def dependency_spec() -> str:
    project = _table("project")
    return json.dumps([project.get("dependencies", []), TARGET_PYTHON, TARGET_PLATFORMS])


def docker_cli() -> str:
    """The CLI Engine.cli uses by default (28.x if installed, else 20.10's)."""
    exe = DOCKER_CLIS["28"]
    return exe if os.path.exists(exe) else DOCKER_CLIS["20.10"]


class PluginImage:
    """Builds the plugin dir once (per session, and across sessions while the tree is unchanged).

    `ensure(engine)` returns a directory with `config.json` and `rootfs/` for
    `docker plugin create`; the first caller's engine does the `docker build`.
    """

    def __init__(self, work: Path, cache_dir: Path = CACHE_DIR) -> None:
        self.work = work
        self.cache_dir = cache_dir
        self.timings: dict[str, float] = {}
        self.built_on: Engine | None = None  # the engine that ran docker build; None: from the cache
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def _timed(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)

    def ensure(self, engine: Engine) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = self._ensure(engine)
            return self._dir

    def _ensure(self, engine: Engine) -> Path:
        dest = self.cache_dir / f"plugin-rootfs-{plugin_key()}"
        if not _complete(dest):
            with flock(self.cache_dir / ".plugin-rootfs.lock"):
                if not _complete(dest):
                    self._build(engine, dest)
                    self.built_on = engine
        os.utime(dest)  # in use: pruning keeps the newest
        self._prune(keep=dest)
        return dest

    def _build(self, engine: Engine, dest: Path) -> None:
        t0 = time.monotonic()
        base = ensure_base_tar(self.cache_dir)
        self._timed("base_tar", t0)

        t0 = time.monotonic()
        wheels = self.work / "plugin-wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True)
        for whl in dependency_wheels_dir(self.cache_dir).glob("*.whl"):
            if not whl.name.startswith("pyoverlay-"):
                shutil.copy(whl, wheels)
        build_project_wheel(wheels)
        self._timed("wheels", t0)

        t0 = time.monotonic()
        engine.cli("import", "-c", 'CMD ["python3"]', str(base), BASE_IMAGE, timeout=300)
        self._timed("import_base", t0)

        t0 = time.monotonic()
        out = self.cache_dir / f".plugin-build-{os.getpid()}"
        shutil.rmtree(out, ignore_errors=True)
        env = engine.cli_env() | {"DOCKER_HOST": engine.host_url, "DOCKER": docker_cli()}
        try:
            proc = run(
                [BUILD_SCRIPT, "--base", BASE_IMAGE, "--wheels", wheels, "--out", out, "--no-create"],
                env=env,
                timeout=900,
            )
            for line in proc.stderr.splitlines():
                if line.startswith("build-plugin:"):
                    log.info("%s", line)
            (out / "plugin").rename(dest)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(wheels, ignore_errors=True)
        self._timed("build_script", t0)
        # The build left images in this engine's data root; they go with the lab.

    def _prune(self, keep: Path) -> None:
        dirs = sorted(self.cache_dir.glob("plugin-rootfs-*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [d for d in dirs if d != keep][KEEP_ROOTFS - 1 :]:
            log.info("pruning old plugin dir %s", old)
            shutil.rmtree(old, ignore_errors=True)


def _complete(plugin_dir: Path) -> bool:
    return (plugin_dir / "config.json").is_file() and (plugin_dir / "rootfs" / "opt" / "pyoverlay").is_dir()


# --------------------------------------------------------------------- engine side
def engine_path(engine: Engine, host_path: Path) -> str:
    """`host_path` (inside `engine.dir`) as that engine's dockerd sees it (e.g. for a mount source).

    20.10 shares the host's tree; 28.5 runs pivoted into the sid rootfs, where
    `engine.dir` appears at SID_WORKDIR.
    """
    if engine.kind == "20.10":
        return str(host_path)
    return str(PurePosixPath(SID_WORKDIR) / host_path.relative_to(engine.dir))


def plugin_socket(engine: Engine, plugin_id: str) -> Path:
    """A managed plugin's socket seen from the host: `/run/docker/plugins/<id>/` in the engine."""
    return engine.plugins_dir / plugin_id / PLUGIN_SOCKET
