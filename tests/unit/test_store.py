import errno
import os
from pathlib import Path

import pytest

from driver.errors import StorageError
from driver.store.local import LocalStore
from driver.store.memory import MemoryStore


def test_local_store_persists_and_reloads(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    s.put("network/abc", b'{"x": 1}')
    s.put("pool/PyoverlayLocal%2F10.0.0.0%2F24", b"{}")
    s.delete("network/missing")
    again = LocalStore(tmp_path)
    assert again.get("network/abc") == b'{"x": 1}'
    assert set(again.list("pool")) == {"pool/PyoverlayLocal%2F10.0.0.0%2F24"}
    again.delete("network/abc")
    assert LocalStore(tmp_path).get("network/abc") is None


def test_interrupted_write_leaves_old_value(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    s.put("network/abc", b"old")
    # what a kill -9 between write and rename leaves behind
    (tmp_path / "store" / "network" / "abc.json.tmp").write_bytes(b"ne")
    again = LocalStore(tmp_path)
    assert again.get("network/abc") == b"old"
    assert not (tmp_path / "store" / "network" / "abc.json.tmp").exists()


def test_writes_replace_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LocalStore(tmp_path)
    s.put("network/abc", b"old")

    def boom(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match="cannot save record network/abc: simulated crash before rename"):
        s.put("network/abc", b"new")
    monkeypatch.undo()
    assert s.get("network/abc") == b"old"
    assert LocalStore(tmp_path).get("network/abc") == b"old"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_write_that_fails_changes_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    s = LocalStore(tmp_path)
    s.put("network/abc", b"old")

    def refuse(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(StorageError, match=f"cannot save record network/abc: {os.strerror(code)}") as caught:
        s.put("network/abc", b"new")
    assert caught.value.status == 507
    with pytest.raises(StorageError, match="cannot save record network/xyz"):
        s.put("network/xyz", b"x")
    monkeypatch.undo()
    assert (s.get("network/abc"), s.get("network/xyz")) == (b"old", None)
    assert sorted(p.name for p in (tmp_path / "store" / "network").iterdir()) == ["abc.json"]  # no temp left


def test_a_delete_that_fails_keeps_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LocalStore(tmp_path)
    s.put("network/abc", b"old")

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(StorageError, match="cannot delete record network/abc: Read-only file system"):
        s.delete("network/abc")
    monkeypatch.undo()
    assert s.get("network/abc") == b"old" and LocalStore(tmp_path).get("network/abc") == b"old"


@pytest.mark.parametrize("key", ["network/../x", "network/..", "Network/x", "network/a/b", "network/", "x"])
def test_keys_cannot_escape(tmp_path: Path, key: str) -> None:
    for store in (LocalStore(tmp_path), MemoryStore()):
        with pytest.raises(ValueError, match="invalid store key"):
            store.put(key, b"x")
