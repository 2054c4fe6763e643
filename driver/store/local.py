"""The embedded store: one JSON file per record under the state directory.

Crash safety: a record is written to a temporary file in the same directory, flushed
with fsync, renamed over the old one (atomic on POSIX) and the directory is fsynced, so a
``kill -9`` or power loss leaves either the old or the new record, never a torn one.
Leftover temporary files from an interrupted write are removed when the store opens.

Everything is also kept in memory: reads never touch the disk and the working set (a
few records per network and endpoint) is small.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from driver.errors import StorageError
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
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        try:
            path.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(value)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            # The old record stays in place (and in the cache); no half-written file
            # is left to fill what little space there is.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise _unwritable("save", key, err) from None
        # Renamed: the new record is the one on disk, even if the fsync below fails.
        self._cache[key] = value
        self._sync(path.parent, "save", key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            self._cache.pop(key, None)
            return
        except OSError as err:
            raise _unwritable("delete", key, err) from None
        self._cache.pop(key, None)
        self._sync(path.parent, "delete", key)

    @staticmethod
    def _sync(directory: Path, action: str, key: str) -> None:
        try:
            _fsync_dir(directory)
        except OSError as err:
            raise _unwritable(action, key, err) from None

    def list(self, kind: str) -> dict[str, bytes]:
        prefix = kind + "/"
        # A snapshot first (one C-level copy): background threads read while the worker writes.
        return {k: v for k, v in list(self._cache.items()) if k.startswith(prefix)}


def _unwritable(action: str, key: str, err: OSError) -> StorageError:
    where = err.filename or key
    return StorageError(f"state directory: cannot {action} record {key}: {err.strerror or err} ({where})")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
