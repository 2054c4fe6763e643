"""Defaults needed before any heavy import (the CLI binds the socket first)."""

DEFAULT_SOCKET = "/run/docker/plugins/pyoverlay.sock"
DEFAULT_STATE_DIR = "/var/lib/pyoverlay"
