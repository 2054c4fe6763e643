"""Calls to a running driver over its Unix socket, with the standard library only
(the CLI's commands must not need the server's dependencies to ask it something)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from driver.errors import Unavailable

ACCEPT = "application/vnd.docker.plugins.v1.2+json"
# The one path pyoverlay serves beyond dockerd's verbs (see driver.api.routes).
STATUS_VERB = "Pyoverlay.Status"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(path: Path, verb: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """POST ``/verb`` as dockerd does; (HTTP status, decoded JSON). Unavailable if the
    driver cannot be reached or does not answer in time."""
    conn = _UnixConnection(path, timeout)
    data = b"" if body is None else json.dumps(body).encode()
    try:
        conn.request("POST", f"/{verb}", body=data, headers={"Accept": ACCEPT})
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as err:
        why = "no answer in time" if isinstance(err, TimeoutError) else (getattr(err, "strerror", None) or str(err))
        raise Unavailable(f"driver socket {path}: {why}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        raise Unavailable(f"driver socket {path}: answered {resp.status} with a body that is not JSON") from None
