"""State stores: a narrow key/value protocol with one local implementation."""

from driver.store.base import Store
from driver.store.local import LocalStore
from driver.store.memory import MemoryStore

__all__ = ["LocalStore", "MemoryStore", "Store"]
