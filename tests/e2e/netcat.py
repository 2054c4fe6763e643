"""Tiny TCP/UDP server and client run inside namespaces (``nsenter --net=…``) by the tests.

The server answers every connection or datagram with ``<name> saw <peer address>``, so a
test learns both that it got through and which source address arrived (NAT or not).

    python netcat.py serve tcp|udp PORT NAME     (IPv6 socket, accepts IPv4 too)
    python netcat.py ask tcp|udp HOST PORT       (prints the answer; exit 1 on timeout)
"""

from __future__ import annotations

import socket
import sys


def serve(proto: str, port: int, name: str) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if proto == "tcp":
        s.listen(16)
    print("ready", flush=True)
    while True:
        if proto == "tcp":
            conn, peer = s.accept()
            with conn:
                conn.sendall(f"{name} saw {_plain(peer[0])}\n".encode())
        else:
            _, peer = s.recvfrom(2048)
            s.sendto(f"{name} saw {_plain(peer[0])}\n".encode(), peer)


def _plain(addr: str) -> str:
    return addr.removeprefix("::ffff:")


def ask(proto: str, host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(3)
        try:
            if proto == "tcp":
                s.connect((host, port))
                data = s.recv(2048)
            else:
                s.sendto(b"hi", (host, port))
                data, _ = s.recvfrom(2048)
        except OSError as err:
            print(f"failed: {err}")
            return 1
    print(data.decode().strip())
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(ask(sys.argv[2], sys.argv[3], int(sys.argv[4])))
