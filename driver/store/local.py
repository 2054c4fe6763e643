"""The embedded store: one JSON file per record under the state directory.

Crash safety: a record is written to a temporary file in the same directory, flushed
with fsync, renamed over the old one (atomic on POSIX) and the directory is fsynced, so a
``kill -9`` or power loss leaves either the old or the new record, never a torn one.
Leftover temporary files from an interrupted write are removed when the store opens.

Everything is also kept in memory: reads never touch the disk and the working set (a
few records per network and endpoint) is small.
"""

from __future__ import annotations

import os
from pathlib import Path

from driver.store.base import check_key

_TMP_SUFFIX = ".tmp"


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, bytes] = {}
        self._load()

    def _load(self) -> None:
        for kind_dir in self.root.iterdir():
            if not kind_dir.is_dir():
                continue
            for path in kind_dir.iterdir():
                if path.name.endswith(_TMP_SUFFIX):
                    path.unlink(missing_ok=True)
                elif path.name.endswith(".json"):
                    key = f"{kind_dir.name}/{path.name.removesuffix('.json')}"
                    self._cache[key] = path.read_bytes()

    def _path(self, key: str) -> Path:
        check_key(key)
        kind, name = key.split("/", 1)
        return self.root / kind / f"{name}.json"

    def get(self, key: str) -> bytes | None:
        return self._cache.get(key)

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        with open(tmp, "wb") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        self._cache[key] = value

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._cache.pop(key, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def list(self, kind: str) -> dict[str, bytes]:
        prefix = kind + "/"
        # A snapshot first (one C-level copy): background threads read while the worker writes.
        return {k: v for k, v in list(self._cache.items()) if k.startswith(prefix)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
