"""``pyoverlay doctor`` (being written)."""

from __future__ import annotations


def run(overrides: dict[str, object]) -> int:
    print("pyoverlay doctor: not available yet")
    return 1
