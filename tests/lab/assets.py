"""Offline artefacts: the busybox image tarball and the Debian sid rootfs with dockerd 28.5."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .proc import LabError, log, run

CACHE_DIR = Path(os.environ.get("PYOVERLAY_E2E_CACHE", "/var/cache/pyoverlay-test"))
SID_TAR = CACHE_DIR / "sid-docker.tar"
BUSYBOX = Path("/bin/busybox")
MIRROR = "http://deb.debian.org/debian"


def build_busybox_tar(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Rootfs tarball: static busybox plus one symlink per applet (LAB §5); `docker import` it."""
    if not busybox.exists():
        raise LabError(f"{busybox} missing (apt-get install busybox-static)")
    applets = run([busybox, "--list"]).stdout.split()
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for a in applets:
            if a == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{a}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        # A passwd/group lets `docker exec -u` and `id` work; busybox needs nothing else.
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(dest)
    return dest


@contextmanager
def flock(path: Path) -> Iterator[None]:
    """Several sessions may build the same artefact: one builds, the others wait and reuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def mmdebstrap_tar(path: Path, args: Sequence[str], *, lock: Path, timeout: float, what: str) -> Path:
    """``path``, made with ``mmdebstrap ARGS TMP MIRROR`` (slow, needs the mirror) when missing."""
    if path.exists():
        return path
    with flock(lock):
        if path.exists():
            return path
        if not shutil.which("mmdebstrap"):
            raise LabError(f"{path} missing and mmdebstrap not installed")
        tmp = path.with_suffix(f".tmp{os.getpid()}.tar")
        log.warning("building %s with mmdebstrap (slow path, %s)", path, what)
        t0 = time.monotonic()
        try:
            run(["mmdebstrap", *args, tmp, MIRROR], timeout=timeout)
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("built %s in %.1fs", path, time.monotonic() - t0)
    return path


def ensure_sid_tar(path: Path = SID_TAR, timeout: float = 1800.0) -> Path:
    """The sid rootfs tarball with dockerd 28.5 (LAB §16)."""
    args = ["--variant=minbase", '--aptopt=Acquire::Check-Valid-Until "false"', "--include=docker.io,iptables", "sid"]
    return mmdebstrap_tar(path, args, lock=path.parent / ".sid-docker.lock", timeout=timeout, what="~35 s")


def cached_rootfs(tar: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """The tarball unpacked once into the cache (keyed by size and mtime), shared read-only.

    Unpacking takes 1.3-4.4 s and removing it 2 s, so it is kept across sessions;
    engines mount it read-only, so concurrent sessions cannot disturb each other.
    """
    st = tar.stat()
    dest = cache_dir / f"{tar.stem}-root-{st.st_size}-{st.st_mtime_ns}"
    if dest.is_dir():
        return dest
    with flock(cache_dir / f".{tar.stem}-root.lock"):
        if dest.is_dir():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            run(["tar", "-C", tmp, "--numeric-owner", "-xf", tar], timeout=600)
            # Mount points the engine's mount setup needs in a read-only tree.
            (tmp / ".po-oldroot").mkdir(exist_ok=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
