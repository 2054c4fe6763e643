"""uvicorn's HTTP/1.1 protocol, with the one answer it writes itself made an ``{"Err"}``.

A request h11 cannot parse (a garbage request line, a bad header, broken chunked
encoding) never reaches the app: uvicorn answers it with a text/plain 400 of its own.
dockerd reads ``Err`` from every answer of a plugin, so that 400 says what was wrong in
JSON like every other failure. Passed to ``uvicorn.Config(http=...)``, which also pins
h11: with httptools installed, "auto" would pick a parser this class does not cover.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from driver.app import MEDIA_TYPE, _clamp

log = logging.getLogger(__name__)


# h11 quotes the offending bytes as a repr of its buffer: "bytearray(b'zz\\r\\n')".
_BUFFER_REPR = re.compile(r"bytearray\((b'[^']*'|b\"[^\"]*\")\)")


def framing_error(detail: str) -> bytes:
    detail = _BUFFER_REPR.sub(r"\1", detail)
    return json.dumps({"Err": f"malformed HTTP request: {_clamp(detail)}"}).encode()


class PluginH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its `except h11.RemoteProtocolError` and passes only a
        # generic sentence; the exception being handled says what was wrong ("illegal
        # chunk header: b'zz'"). Anything else keeps uvicorn's sentence.
        err = sys.exception()
        detail = str(err) if isinstance(err, h11.RemoteProtocolError) and str(err) else msg
        log.debug("answered 400 before the app: %s", detail)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            # An answer is already on its way (the app refused the request early, e.g. a
            # 413, and the rest of it is broken): h11 cannot start a second one.
            self.transport.close()
            return
        body = framing_error(detail)
        headers = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        out = self.conn.send(h11.Response(status_code=400, headers=headers, reason=STATUS_PHRASES[400]))
        out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.transport.write(out)
        self.transport.close()
