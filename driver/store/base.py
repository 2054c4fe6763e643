"""The store protocol every backend implements.

Keys are ``<kind>/<name>``: ``kind`` is a lower-case word and ``name`` is already
escaped by the caller (no ``/``), so a key maps to one file or one etcd key. Values are
opaque bytes (JSON documents written by ``driver.state``).
"""

from __future__ import annotations

import re
from typing import Protocol

KEY_RE = re.compile(r"^[a-z]+/[A-Za-z0-9._%:-]{1,200}$")


def check_key(key: str) -> None:
    # Keys come from request IDs; refusing anything unexpected keeps a crafted ID from
    # ever naming a path outside the store.
    if not KEY_RE.match(key) or key.split("/", 1)[1] in {".", ".."}:
        raise ValueError(f"invalid store key {key!r}")


class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def list(self, kind: str) -> dict[str, bytes]:
        """Every key of ``kind`` (``"network"`` → ``{"network/abc": b"…"}``)."""
