"""Where the driver's log lines go, and what each one looks like.

A managed plugin's stdout reaches dockerd's log at level info and its stderr at level
error, and a systemd journal keeps the two streams apart too: so warnings and errors go
to stderr and everything below to stdout, and a warning is never shown as an info nor an
info as an error. Each event is one line (a traceback is folded into it), so a log
shipper that splits on newlines never tears an event apart.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from driver.ops.logcontext import RequestIdFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup_logging(level: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Route records at ``level`` and above: below WARNING to ``out``, the rest to ``err``."""
    formatter = OneLineFormatter(FORMAT)
    low = logging.StreamHandler(out or sys.stdout)
    low.addFilter(_Below(logging.WARNING))
    high = logging.StreamHandler(err or sys.stderr)
    high.setLevel(logging.WARNING)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in (low, high):
        handler.setFormatter(formatter)
        # On the handler, not a logger: records of every logger (ours, uvicorn's) pass it.
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug; ours is the useful level.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
