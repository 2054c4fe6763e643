"""The network driver: CNM lifecycle over records, modes and the firewall.

Every public method runs on the single worker thread (``driver.worker``), so calls are
serialised: no two requests touch one network at the same time, and none races the
reconciliation at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from driver.api import models
from driver.errors import Conflict, DriverError, InvalidRequest
from driver.firewall import Firewall
from driver.firewall.rules import render
from driver.network import ports
from driver.network.firewall_view import bridge_rules
from driver.network.mac import check_mac, mac_for
from driver.network.modes import JoinInfo, Mode
from driver.network.modes.bridge import BRIDGED_MODES
from driver.network.requests import endpoint_address, gateway_for, network_record
from driver.network.steps import Steps, checkpoint
from driver.state import EndpointRecord, NetworkRecord, PortBinding, Repo
from driver.worker import ensure_wanted

log = logging.getLogger(__name__)


class NetworkService:
    def __init__(self, repo: Repo, modes: Mapping[str, Mode], firewall: Firewall) -> None:
        self.repo = repo
        self.modes = modes
        self.firewall = firewall

    # -- networks -------------------------------------------------------------
    def create_network(self, req: models.CreateNetworkRequest) -> None:
        rec = network_record(req)
        old = self.repo.network(req.NetworkID)
        if old is not None:
            self._repeat_create(old, rec)
            return
        mode = self.mode(rec)
        for other in self.repo.networks():
            if other.config.mode == rec.config.mode:
                mode.check_coexistence(rec, other)
        mode.prepare_network(rec)
        what = f"create network {rec.id[:12]}"
        self.repo.put_network(rec)
        try:
            with Steps(what) as steps:
                mode.create_network(rec, steps)
                steps.run("program firewall", self.sync_firewall)
                # Inside the steps: a caller gone, or a record that cannot be saved
                # (a full state dir), undoes the kernel's side too.
                ensure_wanted(what)
                rec.status = "ready"
                self.repo.put_network(rec)
        except BaseException:
            self._forget_quietly(what, lambda: self.repo.delete_network(rec.id))
            self._sync_firewall_quietly()
            raise
        log.info("network %s created (%s)", rec.id[:12], rec.config.mode)

    def _repeat_create(self, old: NetworkRecord, new: NetworkRecord) -> None:
        if (old.config, old.ipv4, old.ipv6) != (new.config, new.ipv4, new.ipv6):
            raise Conflict(f"NetworkID: network {old.id[:12]} already exists with different settings")
        # dockerd retried a create that already went through: make sure it is all there.
        self.mode(old).ensure_network(old)
        self.sync_firewall()

    def delete_network(self, nid: str) -> None:
        """Delete a network and what is left of its endpoints; also finishes one a crash
        interrupted (reconciliation calls it for a record left ``deleting``)."""
        rec = self.repo.network(nid)
        if rec is None:
            return
        what = f"delete network {nid[:12]}"
        mode = self.mode(rec)
        if rec.status != "deleting":
            # Before the kernel is touched: a crash from here on is finished at the next
            # start, never restored (dockerd forgets the network when its retry is refused).
            checkpoint(f"{what}: mark deleting")
            rec.status = "deleting"
            self.repo.put_network(rec)
        for ep in self.repo.endpoints(nid):
            checkpoint(f"{what}: delete endpoint {ep.id[:12]}")
            mode.delete_endpoint(rec, ep)
            self.repo.delete_endpoint(ep.id)
        self._hand_over_device(rec, mode, what)
        checkpoint(f"{what}: remove devices")
        mode.delete_network(rec)
        checkpoint(f"{what}: forget record")
        self.repo.delete_network(nid)
        checkpoint(f"{what}: sync firewall")
        self._sync_firewall_after_delete(what)
        log.info("network %s deleted", nid[:12])

    def _hand_over_device(self, rec: NetworkRecord, mode: Mode, what: str) -> None:
        """A device we created (a VLAN sub-interface) that another network still uses
        passes to that network, to be deleted with the last one using it."""
        if not rec.owns_device:
            return
        for other in self.repo.networks():
            if other.id != rec.id and other.config.mode == rec.config.mode and mode.shares_device(rec, other):
                checkpoint(f"{what}: hand the device over to network {other.id[:12]}")
                other.owns_device, rec.owns_device = True, False
                self.repo.put_network(other)
                return

    # -- endpoints ------------------------------------------------------------
    def create_endpoint(self, req: models.CreateEndpointRequest) -> dict[str, Any]:
        net = self._network(req.NetworkID)
        iface = req.Interface
        address = endpoint_address("Interface.Address", iface.Address, net.ipv4)
        address_v6 = endpoint_address("Interface.AddressIPv6", iface.AddressIPv6, net.ipv6)
        requested = check_mac("Interface.MacAddress", iface.MacAddress) if iface.MacAddress else None
        mode = self.mode(net)
        mac = requested or (mac_for(address) if mode.assigns_mac(net) else None)
        ports.parse_portmap(req.Options.get(ports.PORTMAP))  # refuse a bad -p before creating anything
        ports.check_exposed(req.Options.get(ports.EXPOSED))
        host_if, ctr_if = mode.endpoint_names(req.EndpointID)
        ep = EndpointRecord(
            id=req.EndpointID, network_id=net.id, address=address, address_v6=address_v6,
            mac=mac, host_if=host_if, ctr_if=ctr_if,
        )
        old = self.repo.endpoint(req.EndpointID)
        if old is not None:
            if (old.network_id, old.address, old.address_v6) != (ep.network_id, ep.address, ep.address_v6) or (
                requested and requested != old.mac
            ):
                raise Conflict(f"EndpointID: endpoint {old.id[:12]} already exists with different settings")
            ep = old
        else:
            mode.check_new_endpoint(net, self.repo.endpoints(net.id))
            self._create_endpoint(net, ep)
        # Only fields dockerd left empty may be filled in, or it rolls the endpoint back.
        return {"Interface": {"MacAddress": ep.mac} if ep.mac and not requested else {}}

    def _create_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        what = f"create endpoint {ep.id[:12]}"
        self.repo.put_endpoint(ep)
        try:
            with Steps(what) as steps:
                self.mode(net).create_endpoint(net, ep, steps)
                ensure_wanted(what)
                checkpoint(f"{what}: mark ready")
                ep.status = "ready"
                self.repo.put_endpoint(ep)
        except BaseException:
            self._forget_quietly(what, lambda: self.repo.delete_endpoint(ep.id))
            raise
        checkpoint(f"{what}: answer")

    def join(self, req: models.JoinRequest) -> JoinInfo:
        net = self._network(req.NetworkID)
        ep = self._endpoint(req.EndpointID)
        internal = net.config.internal
        return JoinInfo(
            src_name=ep.ctr_if,
            dst_prefix=net.config.iface_prefix,
            gateway=None if internal else gateway_for(ep.address, net.ipv4),
            gateway_v6=None if internal else gateway_for(ep.address_v6, net.ipv6),
            disable_gateway_service=internal,
        )

    def leave(self, nid: str, eid: str) -> None:
        # The interface is still in the sandbox here; it is deleted in DeleteEndpoint.
        log.debug("endpoint %s left network %s", eid[:12], nid[:12])

    def program(self, req: models.ProgramRequest) -> None:
        ep = self._endpoint(req.EndpointID)
        net = self._network(ep.network_id)
        binding = net.config.host_binding_ipv4
        wanted = [ports.default_host_ip(b, binding) for b in ports.parse_portmap(req.Options.get(ports.PORTMAP))]
        if net.config.mode not in BRIDGED_MODES or net.config.internal:
            if wanted:
                log.warning("endpoint %s: ports are not published on %s networks", ep.id[:12], self.kind(net))
            return
        if ep.programmed and ports.same_request(wanted, ep.ports):
            return
        taken = [p for other in self.repo.endpoints() if other.id != ep.id for p in other.ports]
        bindings = ports.resolve(wanted, taken, ports.ephemeral_range())
        self._set_ports(f"program endpoint {ep.id[:12]}", ep, bindings, programmed=True)

    def revoke(self, nid: str, eid: str) -> None:
        ep = self.repo.endpoint(eid)
        if ep is not None and (ep.ports or ep.programmed):
            self._set_ports(f"revoke endpoint {eid[:12]}", ep, [], programmed=False)

    def _set_ports(self, what: str, ep: EndpointRecord, bindings: list[PortBinding], programmed: bool) -> None:
        old = (ep.ports, ep.programmed)
        checkpoint(f"{what}: save ports")
        ep.ports, ep.programmed = bindings, programmed
        self.repo.put_endpoint(ep)
        try:
            checkpoint(f"{what}: sync firewall")
            self.sync_firewall()
            if programmed:  # a revoke may as well finish
                ensure_wanted(what)
        except BaseException:
            ep.ports, ep.programmed = old
            self._forget_quietly(what, lambda: self.repo.put_endpoint(ep))
            self._sync_firewall_quietly()
            raise

    def delete_endpoint(self, nid: str, eid: str) -> None:
        """Delete an endpoint; also finishes one a crash interrupted (``deleting``)."""
        ep = self.repo.endpoint(eid)
        if ep is None:
            return
        what = f"delete endpoint {eid[:12]}"
        if ep.status != "deleting":
            # As for networks: from here on a crash is finished at start, never restored.
            checkpoint(f"{what}: mark deleting")
            ep.status = "deleting"
            self.repo.put_endpoint(ep)
        net = self.repo.network(ep.network_id)
        if net is not None:
            checkpoint(f"{what}: remove links")
            self.mode(net).delete_endpoint(net, ep)
        checkpoint(f"{what}: forget record")
        self.repo.delete_endpoint(eid)
        if ep.ports:  # Revoke does not always come first (e.g. after a plugin re-enable)
            checkpoint(f"{what}: sync firewall")
            self._sync_firewall_after_delete(what)

    def oper_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self.repo.endpoint(eid)
        if ep is None:
            return {}
        return {"host_interface": ep.host_if, "mac_address": ep.mac}

    # -- helpers --------------------------------------------------------------
    def mode(self, net: NetworkRecord) -> Mode:
        return self.modes[net.config.mode]

    @staticmethod
    def kind(net: NetworkRecord) -> str:
        return "internal" if net.config.internal else net.config.mode

    def _network(self, nid: str) -> NetworkRecord:
        rec = self.repo.network(nid)
        if rec is None:
            raise InvalidRequest(f"NetworkID: network {nid[:12]} is not known to pyoverlay")
        return rec

    def _endpoint(self, eid: str) -> EndpointRecord:
        rec = self.repo.endpoint(eid)
        if rec is None:
            raise InvalidRequest(f"EndpointID: endpoint {eid[:12]} is not known to pyoverlay")
        return rec

    @staticmethod
    def _forget_quietly(what: str, forget: Callable[[], None]) -> None:
        # A rollback must not hide why the call failed. A record it cannot write back (a
        # read-only state dir) is left "creating", which the next start rolls back.
        try:
            forget()
        except Exception as err:
            log.error("%s: forgetting the record during rollback failed: %s", what, err)

    def _sync_firewall_after_delete(self, what: str) -> None:
        # The object is gone from the kernel and the records: failing the call now would
        # only make dockerd keep what no longer exists. Rules left for it match nothing
        # and go with the background check's retry of the failed apply (watch.py).
        try:
            self.sync_firewall()
        except DriverError as err:
            log.warning("%s: done, but its firewall rules stay until a retry succeeds: %s", what, err)

    def _sync_firewall_quietly(self) -> None:
        try:
            self.sync_firewall()
        except Exception as err:
            log.error("firewall sync during rollback failed: %s", err)

    def sync_firewall(self) -> None:
        # In a fixed order: the same records give the same rules, in a restart too.
        nets = sorted(self.repo.networks(), key=lambda n: n.id)
        endpoints = sorted(self.repo.endpoints(), key=lambda e: e.id)
        for fw, v6 in ((self.firewall.v4, False), (self.firewall.v6, True)):
            fw.apply(render(bridge_rules(nets, endpoints, v6), v6))

