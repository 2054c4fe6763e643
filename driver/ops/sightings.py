"""When each remote host was last seen in the peer records, from what etcd already sent.

A peer record lives on its host's lease, so a host is in the view exactly while its
lease lives; what is not known without asking etcd is the lease's remaining TTL. What
the listing and the watch do tell, for free, is when a host's records were last listed
or changed: that is kept here, per host, for ``pyoverlay status``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from driver.cluster.registry import parse_peer_key


class PeerSightings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # host → monotonic time

    def saw(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        hosts = {p[1] for p in map(parse_peer_key, keys) if p is not None}
        with self._lock:
            for host in hosts:
                self._seen[host] = now

    def age(self, host: str) -> float | None:
        with self._lock:
            seen = self._seen.get(host)
        return None if seen is None else time.monotonic() - seen
