"""``pyoverlay doctor``: the checks of ``driver.ops.doctor`` on this host, with the
settings ``serve`` would use (same flags and environment), one line each.

Every check runs whatever the others found (no dockerd: that line fails, the rest still
report), and each is bounded (a hung dockerd or etcd costs seconds, not forever). The
exit status is 1 when any check fails.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from driver.config import Settings, SettingsError, load_settings
from driver.errors import DriverError
from driver.ops import doctor as d
from driver.ops.client import STATUS_VERB, call

TIMEOUT = 5.0


def run_cmd(argv: list[str]) -> tuple[int, str]:
    if shutil.which(argv[0]) is None:
        return 127, f"{argv[0]}: not found"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer within {TIMEOUT:g}s"
    return proc.returncode, proc.stdout + proc.stderr


def read_sysctl(name: str) -> str | None:
    # /proc/sys/net shows the network namespace of the reader: this process's.
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def firewalld_active() -> bool | None:
    if shutil.which("systemctl") is not None:
        code, out = run_cmd(["systemctl", "is-active", "firewalld"])
        if code == 0:
            return True
        if "inactive" in out or "failed" in out:
            return False
    # No systemd answer (a container, another init): firewalld keeps its state here.
    if Path("/run/firewalld").exists():
        return Path("/run/firewalld/firewalld.pid").exists() or None
    return None


def docker_version(host: str) -> dict[str, Any]:
    import docker

    client = docker.APIClient(base_url=host, version="auto", timeout=TIMEOUT)
    try:
        return dict(client.version())
    finally:
        client.close()


def driver_facts(socket: Path) -> d.DriverFacts | None:
    try:
        code, status = call(socket, STATUS_VERB, timeout=TIMEOUT)
    except DriverError:
        return None
    if code != 200 or not isinstance(status, dict):
        return None
    nets = status.get("networks", [])
    v6 = [n for n in nets if any(":" in s["pool"] for s in n.get("subnets", []))]
    return d.DriverFacts(len(nets), len(v6), list(status.get("startup", {}).get("failures", [])))


def checks(settings: Settings) -> list[d.Check]:
    out: list[d.Check] = []
    docker = d.dockerd(lambda: docker_version(settings.docker_host), settings.docker_host)
    out.append(docker)
    out.append(d.driver_socket(lambda: call(settings.socket, "Plugin.Activate", timeout=TIMEOUT), str(settings.socket)))
    facts = driver_facts(settings.socket) if out[-1].level == "ok" else None
    out += [c for c in [d.reconciliation(facts)] if c]
    out.append(d.firewall_backend(run_cmd))
    code, rules = run_cmd(["iptables", "-S", "FORWARD"])
    forward = rules if code == 0 else None
    out.append(d.forward_jump(forward, facts))
    out += [c for c in [d.forward_policy(forward, docker.level == "ok")] if c]
    out += d.forwarding(read_sysctl, facts)
    out.append(d.br_netfilter(read_sysctl))
    out.append(d.firewalld(firewalld_active))
    if settings.store == "etcd":
        out += _cluster(settings)
    return out


def _cluster(settings: Settings) -> list[d.Check]:
    from driver.cluster.etcd import EtcdStore
    from driver.cluster.node import VXLAN_OVERHEAD, resolve_vtep
    from driver.netlink.adapter import Netlink

    where = ",".join(settings.etcd_endpoints)
    store = EtcdStore(settings.etcd_endpoints, settings.etcd_prefix, settings.etcd_timeout,
                      settings.etcd_ca, settings.etcd_cert, settings.etcd_key)  # fmt: skip
    try:
        out = [d.etcd(lambda: store.get("hosts/"), where)]
    finally:
        store.close()

    def resolve() -> tuple[str, str, int]:
        nl = Netlink()
        try:
            vtep, link = resolve_vtep(nl, settings.advertise_addr)
        finally:
            nl.close()
        return vtep, str(link.name), int(link.mtu)

    out.append(d.underlay(resolve, VXLAN_OVERHEAD))
    return out


def run(overrides: dict[str, object]) -> int:
    try:
        settings = load_settings(overrides)
        found: list[d.Check] = []
    except SettingsError as err:
        # Check the rest with the defaults: a bad cluster flag must not hide a dead dockerd.
        why = str(err).removeprefix("settings: ")
        found = [d.Check("fail", "settings", why, "the driver refuses to start with these; correct them")]
        settings = Settings.model_construct()
        settings.socket = Path(str(overrides.get("socket", settings.socket)))
    found += checks(settings)
    for check in found:
        print(check.line(), flush=True)
    return 1 if any(c.level == "fail" for c in found) else 0
