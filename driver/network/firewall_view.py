"""The records as the firewall sees them: one ``BridgeRules`` per bridge network."""

from __future__ import annotations

import ipaddress

from driver.firewall.rules import PROTOCOLS, BridgeRules, Published
from driver.network import ports
from driver.network.modes.bridge import BRIDGED_MODES, bridge_name
from driver.state import EndpointRecord, NetworkRecord


def bridge_rules(nets: list[NetworkRecord], endpoints: list[EndpointRecord], v6: bool) -> list[BridgeRules]:
    out = []
    for net in nets:
        if net.config.mode not in BRIDGED_MODES or (v6 and not net.config.enable_ipv6):
            continue
        cfg = net.config
        out.append(BridgeRules(
            bridge=bridge_name(net),
            subnets=tuple(s.pool for s in (net.ipv6 if v6 else net.ipv4)),
            internal=cfg.internal,
            icc=cfg.icc,
            masquerade=cfg.masquerade,
            published=tuple(_published([e for e in endpoints if e.network_id == net.id], v6)),
        ))
    return out


def _published(endpoints: list[EndpointRecord], v6: bool) -> list[Published]:
    out = []
    for ep in endpoints:
        ctr = ep.address_v6 if v6 else ep.address
        if ctr is None:
            continue
        ctr_ip = str(ipaddress.ip_interface(ctr).ip)
        for b in ep.ports:
            if (6 if v6 else 4) in ports.families(b.host_ip):
                host = None if b.host_ip in ports.WILDCARDS else b.host_ip
                out.append(Published(PROTOCOLS[b.proto], host, b.host_port, ctr_ip, b.port))
    return out
