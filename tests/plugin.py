"""A pyoverlay process in a throwaway network namespace, driven over its socket as dockerd.

Used by the protocol and netns tiers: the driver runs for real (real netlink, real
iptables) but only inside a namespace the test created and deletes afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.lab import DriverProcess, Netns, iptables_save, links

_names = itertools.count()
ACCEPT = "application/vnd.docker.plugins.v1.2+json"


@dataclass
class Plugin:
    ns: Netns
    driver: DriverProcess
    root: Path
    _client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        # One client for the plugin's life: building one costs ~50 ms (its TLS context).
        if self._client is None:
            transport = httpx.HTTPTransport(uds=str(self.driver.socket_path))
            self._client = httpx.Client(transport=transport, base_url="http://plugin", timeout=30)
        return self._client

    def raw(self, verb: str, body: bytes) -> httpx.Response:
        # exactly dockerd's headers: empty Host, no Content-Type
        return self.client.post(f"/{verb}", content=body, headers={"Host": "", "Accept": ACCEPT})

    def restart(self, kill: bool = False) -> None:
        self.close()
        if kill:
            self.driver.kill9()
        else:
            self.driver.stop()
        self.driver.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Return once start-up reconciliation is done: it runs first on the worker, so
        any call served by the worker is answered after it."""
        self.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": "0", "EndpointID": "0"})

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def call(self, verb: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else (json.dumps(body) + "\n").encode()
        r = self.raw(verb, data)
        return r.status_code, r.json()

    def ok(self, verb: str, body: Any = None) -> Any:
        status, out = self.call(verb, body)
        assert status == 200, (verb, status, out)
        return out

    def err(self, verb: str, body: Any, status: int | None = None) -> str:
        code, out = self.call(verb, body)
        assert 400 <= code < 600 and set(out) == {"Err"}, (verb, code, out)
        if status is not None:
            assert code == status, (verb, code, out)
        return str(out["Err"])

    def link_names(self) -> set[str]:
        return {ln.name for ln in links(self.ns)}

    def iptables(self, v6: bool = False) -> str:
        return iptables_save(self.ns, v6=v6)

    def snapshot(self) -> tuple[object, ...]:
        """Everything a failed call must leave unchanged: links, addresses, rules, records."""
        state = sorted(p.relative_to(self.driver.state_dir).as_posix() + ":" + p.read_text()
                       for p in (self.driver.state_dir / "store").rglob("*.json"))
        # addresses only, not their flags: link-local ones leave "tentative" on their own
        addrs = sorted((i["ifname"], a["local"], a["prefixlen"]) for i in self.ns.ip_json("addr")
                       for a in i.get("addr_info", []))
        rules = [line for line in self.iptables().splitlines() if not line.startswith("#")]
        return (sorted(self.link_names()), addrs, rules, state)


def start_plugin(root: Path, env: dict[str, str] | None = None) -> Plugin:
    ns = Netns(f"pot{os.getpid() % 100000}x{next(_names)}").create()
    root.mkdir(parents=True, exist_ok=True)
    driver = DriverProcess(ns, root, root / "state", root / "driver.log", env=env)
    try:
        driver.start()
    except BaseException:
        ns.delete()
        raise
    return Plugin(ns, driver, root)


def stop_plugin(p: Plugin) -> None:
    p.close()
    p.driver.stop()
    p.ns.delete()


def plugin_fixture(root: Path, env: dict[str, str] | None = None) -> Iterator[Plugin]:
    p = start_plugin(root, env)
    try:
        yield p
    finally:
        stop_plugin(p)


def is_root() -> bool:
    return os.geteuid() == 0


def have(cmd: str) -> bool:
    return subprocess.run(["sh", "-c", f"command -v {cmd}"], capture_output=True, check=False).returncode == 0
