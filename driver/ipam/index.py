"""The in-memory index of one pool's held addresses: lowest free address in amortised O(1).

Addresses are integers. ``lo..hi`` is the range dynamic requests pick from (the pool's
assignable addresses, narrowed by ``--ip-range``); held addresses may also lie outside it
(aux addresses anywhere in the pool).

Invariant: every address in ``[lo, _next)`` is either held or a *hole* (free, in
``_holes`` and in the min-heap ``_heap``). So the lowest free address is the smallest
hole, or else the first address from ``_next`` on that is not held. ``_next`` only walks
past addresses taken at or above it, and drops back over holes on release, so each call
costs O(1) amortised (O(log holes) for the heap). Memory is proportional to the held
addresses and the holes below the highest one picked, never to the pool's size: an IPv6
/64 with one address at its top end holds one integer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

# Stale heap entries (holes taken explicitly, or swallowed by ``_next`` dropping back)
# tolerated before the heap is rebuilt from ``_holes``.
_SLACK = 32


class AddressIndex:
    def __init__(self, lo: int, hi: int, held: Iterable[int] = ()) -> None:
        self.lo, self.hi = lo, hi
        self._held: set[int] = set()
        self._next = lo
        self._holes: set[int] = set()
        self._heap: list[int] = []
        for addr in held:
            self.take(addr)

    def __contains__(self, addr: object) -> bool:
        return addr in self._held

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[int]:
        return iter(set(self._held))

    def lowest(self) -> int | None:
        """The lowest free address of ``lo..hi`` (not taken yet), or None when none is left."""
        while self._heap and self._heap[0] not in self._holes:
            heapq.heappop(self._heap)
        if self._heap:
            return self._heap[0]
        while self._next <= self.hi and self._next in self._held:
            self._next += 1
        return self._next if self._next <= self.hi else None

    def take(self, addr: int) -> None:
        if addr in self._held:
            raise ValueError(f"address {addr} is already held")
        self._held.add(addr)
        self._holes.discard(addr)  # its heap entry goes stale, dropped by lowest()

    def release(self, addr: int) -> None:
        """Free ``addr``; releasing an address that is not held does nothing."""
        if addr not in self._held:
            return
        self._held.remove(addr)
        if self.lo <= addr < self._next:
            self._holes.add(addr)
            heapq.heappush(self._heap, addr)
            self._drop_back()

    def _drop_back(self) -> None:
        # Holes right below _next are just "not reached yet": folding them back keeps the
        # hole set to gaps under a held address, so releasing everything empties it.
        while self._next > self.lo and self._next - 1 in self._holes:
            self._next -= 1
            self._holes.remove(self._next)
        if len(self._heap) > 2 * len(self._holes) + _SLACK:
            self._heap = list(self._holes)
            heapq.heapify(self._heap)
