"""The metrics listener: ``GET /metrics`` on its own Unix socket or TCP address.

A listener of its own, not a route on the driver's socket: a scraper then needs no
access to the socket that can create networks, a TCP address can be opened to a
Prometheus without opening the driver, and a slow or hung scraper occupies a thread
here, never dockerd's event loop. Off unless ``--metrics-socket``/``--metrics-addr``.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _handler(render: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes every 15 s would drown the log; a Unix peer has no address anyway.
            log.debug("metrics: " + format, *args)

    return Handler


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True


class MetricsServer:
    def __init__(self, render: Callable[[], str]) -> None:
        self.render = render
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def listen_unix(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening Unix socket (see ``driver.cli.bind_socket``)."""
        server = _UnixServer(sock.getsockname(), _handler(self.render), bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        self._start(server, f"unix:{sock.getsockname()}")

    def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Tcp", (_TcpServer,), {"address_family": family})
        server = server_cls((host, port), _handler(self.render))
        addr = server.server_address
        self._start(server, f"{host}:{addr[1]}")
        return str(addr[0]), int(addr[1])

    def _start(self, server: socketserver.BaseServer, where: str) -> None:
        t = threading.Thread(target=server.serve_forever, name="pyoverlay-metrics", daemon=True)
        t.start()
        self._servers.append(server)
        self._threads.append(t)
        log.info("metrics served on %s", where)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for t in self._threads:
            t.join(timeout=5)
