"""``pyoverlay status`` as text: one block per section, short IDs, aligned columns.

Pure: takes the JSON document the driver answers (``driver.ops.status``) and nothing
else, so what the table shows is exactly what ``--json`` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SHORT = 12


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s ago"


def _dash(value: object) -> str:
    return "-" if value in (None, "", []) else str(value)


def render(status: dict[str, Any]) -> str:
    lines = [f"pyoverlay {status['version']}  pid {status['pid']}  up {status['uptime_seconds']:.0f}s"]
    lines += _startup(status)
    for req in status.get("in_flight", []):
        lines.append(f"busy: {req['verb']} running for {req['seconds']:.1f}s")
    if status.get("worker"):
        lines.append(f"worker: {status['worker']}")
    lines += _cluster(status.get("cluster"))
    lines += _networks(status["networks"])
    lines += _pools(status["pools"])
    return "\n".join(lines) + "\n"


def _startup(status: dict[str, Any]) -> list[str]:
    start = status["startup"]
    if not start["reconciled"]:
        return ["reconciliation: still running (requests wait for it)"]
    if not start["failures"]:
        return ["reconciliation: ok"]
    failed = start["failures"]
    return [f"reconciliation: {len(failed)} object(s) not restored (retried in the background)",
            *(f"  {f}" for f in failed)]  # fmt: skip


def _cluster(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return ["cluster: none (--store local)"]
    store, sync, peers = c["store"], c["sync"], c["peers"]
    if store["answering"] is None:
        health = "not asked yet"
    elif store["answering"]:
        health = f"answering (last answer {_secs(store['last_ok_seconds'])})"
    else:
        health = f"NOT answering since {_secs(store['last_error_seconds'])}: {store['last_error']}"
    return [
        f"cluster: host {c['host']}  VTEP {c['vtep']} on {c['underlay']} (overlay MTU up to {c['max_mtu']})",
        f"  etcd: {health}",
        f"  sync: {'error: ' + sync['last_error'] if sync['last_error'] else 'ok' if sync['synced'] else 'pending'}",
        f"  peers: {'listed' if peers['listed'] else 'not listed yet'}, "
        f"kernel synced {_secs(peers['last_sync_seconds'])}, "
        f"last watch batch {_secs(peers['last_watch_batch_seconds'])}",
    ]


def _networks(nets: list[dict[str, Any]]) -> list[str]:
    lines = [f"networks: {len(nets)}"]
    for n in nets:
        subnets = ", ".join(s["pool"] + (f" gw {s['gateway'].split('/')[0]}" if s["gateway"] else "")
                            for s in n["subnets"])  # fmt: skip
        where = f"bridge {n['bridge']}" if n["bridge"] else f"parent {n['parent']}"
        flags = " internal" if n["internal"] else ""
        flags += "" if n["status"] == "ready" else f" ({n['status']})"
        lines.append(f"  {n['id'][:SHORT]}  {n['mode']}{flags}  {where}  mtu {_dash(n['mtu'])}  {_dash(subnets)}")
        ov = n.get("overlay")
        if ov:
            lines.append(f"    overlay {ov['name']}  VNI {_dash(ov['vni'])}  MTU {_dash(ov['mtu'])}")
        eps = n["endpoints"]
        if eps:
            rows = [(e["id"][:SHORT], _dash(e["address"]), _dash(e["address_v6"]), _dash(e["mac"]),
                     _dash(e["interface"]), ",".join(e["ports"]) or "-") for e in eps]  # fmt: skip
            lines += _table(("endpoint", "address", "ipv6", "mac", "interface", "ports"), rows, "    ")
        else:
            lines.append("    no endpoints")
        if ov:
            lines += _peers(ov["peers"])
    return lines


def _peers(peers: list[dict[str, Any]]) -> list[str]:
    if not peers:
        return ["    no remote endpoints"]
    rows = [(p["host"], p["vtep"], str(len(p["endpoints"])), _secs(p["last_seen_seconds"]),
             " ".join(f"{e['id'][:SHORT]}={e['ip'] or e['ip6'] or e['mac']}" for e in p["endpoints"]))
            for p in peers]  # fmt: skip
    return _table(("peer host", "vtep", "endpoints", "last seen", "remote endpoints"), rows, "    ")


def _pools(pools: list[dict[str, Any]]) -> list[str]:
    lines = [f"pools: {len(pools)}"]
    if pools:
        rows = [(p["pool"], _dash(p["range"]), _dash(p["overlay"]), f"{p['held']} / {p['size']}") for p in pools]
        lines += _table(("pool", "range", "overlay", "held / size"), rows)
    return lines
