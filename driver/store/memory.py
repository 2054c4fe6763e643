"""A dictionary store for unit tests."""

from __future__ import annotations

from driver.store.base import check_key


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        check_key(key)
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def list(self, kind: str) -> dict[str, bytes]:
        return {k: v for k, v in self.data.items() if k.startswith(kind + "/")}
