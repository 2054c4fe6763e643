"""``pyoverlay status``: ask the running driver, print its answer as a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from driver.errors import DriverError
from driver.ops.client import STATUS_VERB, call
from driver.ops.status_view import render


def run(socket_path: Path, as_json: bool) -> int:
    try:
        code, body = call(socket_path, STATUS_VERB)
    except DriverError as err:
        print(f"pyoverlay: {err.message} (is the driver running? see pyoverlay doctor)", file=sys.stderr)
        return 1
    if code != 200:
        why = body.get("Err", body) if isinstance(body, dict) else body
        print(f"pyoverlay: status failed ({code}): {why}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(body, indent=2) + "\n" if as_json else render(body))
    return 0
