"""Which network and endpoint a log line is about, added where the line leaves it out.

The app sets the IDs of the request it serves (``bind_request``); a line logged while it
is served, on the event loop or on the worker, gets `` [network 1a2b3c4d5e6f endpoint
…]`` appended unless it already names those short IDs (the worker runs each call in its
caller's context: ``driver.worker``).
"""

from __future__ import annotations

import contextvars
import logging

_ids: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("pyoverlay_ids", default=())
SHORT = 12


def bind_request(body: object) -> None:
    """Remember the network and endpoint a request names (for the rest of its context)."""
    found = []
    for what, attr in (("network", "NetworkID"), ("endpoint", "EndpointID")):
        value = getattr(body, attr, None)
        if isinstance(value, str) and value:
            found.append((what, value[:SHORT]))
    _ids.set(tuple(found))


def current_ids() -> tuple[tuple[str, str], ...]:
    return _ids.get()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ids = _ids.get()
        if ids and not getattr(record, "_pyoverlay_ids", False):
            text = record.getMessage()
            missing = [f"{what} {short}" for what, short in ids if short not in text]
            if missing:
                record.msg, record.args = f"{text} [{' '.join(missing)}]", None
            record._pyoverlay_ids = True  # two handlers see one record: append once
        return True
