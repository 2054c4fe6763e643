"""The verbs: decode a request, call a service on the worker, encode the answer.

Nothing here decides anything; each handler is a line or two over the services.

Beyond dockerd's verbs there is exactly one path, ``/Pyoverlay.Status``, for ``pyoverlay
status``: read-only, answered from memory, never queued on the worker. It is on this
socket rather than a second one because this socket already has the right owner and
mode (root, 0600, where dockerd and admins look), and because a managed plugin exposes
one socket only. dockerd never calls it (it only calls the verbs it knows), and every
other unknown path still gets dockerd's 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from driver.api import models as m
from driver.ipam.service import IpamService
from driver.network.service import NetworkService
from driver.ops.activity import Activity
from driver.ops.client import STATUS_VERB
from driver.ops.status import StatusSource
from driver.worker import Worker


@dataclass
class Services:
    network: NetworkService
    ipam: IpamService
    worker: Worker
    status: StatusSource
    activity: Activity


Handler = Callable[[Services, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Verb:
    model: type[m.Wire] | None  # None: the verb takes no body (dockerd sends it empty)
    handler: Handler


async def activate(s: Services, _: None) -> dict[str, Any]:
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


async def net_capabilities(s: Services, _: None) -> dict[str, Any]:
    return {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": False}


async def create_network(s: Services, r: m.CreateNetworkRequest) -> dict[str, Any]:
    await s.worker.run(s.network.create_network, r)
    return {}


async def delete_network(s: Services, r: m.NetworkRequest) -> dict[str, Any]:
    await s.worker.run(s.network.delete_network, r.NetworkID)
    return {}


async def allocate_network(s: Services, r: m.AllocateNetworkRequest) -> dict[str, Any]:
    # Only reached on a swarm manager with a global-scope driver; the options are what
    # every node's CreateNetwork receives, so hand them all back.
    return {"Options": r.Options}


async def free_network(s: Services, r: m.NetworkRequest) -> dict[str, Any]:
    return {}


async def create_endpoint(s: Services, r: m.CreateEndpointRequest) -> dict[str, Any]:
    return await s.worker.run(s.network.create_endpoint, r)


async def oper_info(s: Services, r: m.EndpointRequest) -> dict[str, Any]:
    return {"Value": await s.worker.run(s.network.oper_info, r.NetworkID, r.EndpointID)}


async def delete_endpoint(s: Services, r: m.EndpointRequest) -> dict[str, Any]:
    await s.worker.run(s.network.delete_endpoint, r.NetworkID, r.EndpointID)
    return {}


async def join(s: Services, r: m.JoinRequest) -> dict[str, Any]:
    info = await s.worker.run(s.network.join, r)
    out: dict[str, Any] = {"InterfaceName": {"SrcName": info.src_name, "DstPrefix": info.dst_prefix}}
    if info.gateway:
        out["Gateway"] = info.gateway
    if info.gateway_v6:
        out["GatewayIPv6"] = info.gateway_v6
    if info.disable_gateway_service:
        out["DisableGatewayService"] = True
    return out


async def leave(s: Services, r: m.EndpointRequest) -> dict[str, Any]:
    await s.worker.run(s.network.leave, r.NetworkID, r.EndpointID)
    return {}


async def program(s: Services, r: m.ProgramRequest) -> dict[str, Any]:
    await s.worker.run(s.network.program, r)
    return {}


async def revoke(s: Services, r: m.EndpointRequest) -> dict[str, Any]:
    await s.worker.run(s.network.revoke, r.NetworkID, r.EndpointID)
    return {}


async def discover(s: Services, r: m.DiscoveryRequest) -> dict[str, Any]:
    return {}


async def gw_alloc_check(s: Services, r: m.GwAllocCheckRequest) -> dict[str, Any]:
    return {"SkipIPv4": False, "SkipIPv6": False}


async def ipam_capabilities(s: Services, _: None) -> dict[str, Any]:
    return dict(s.ipam.capabilities())


async def address_spaces(s: Services, _: None) -> dict[str, Any]:
    return dict(s.ipam.address_spaces())


async def request_pool(s: Services, r: m.RequestPoolRequest) -> dict[str, Any]:
    rec = await s.worker.run(s.ipam.request_pool, r.AddressSpace, r.Pool, r.SubPool, r.Options, r.V6)
    return {"PoolID": rec.id, "Pool": rec.pool, "Data": {}}


async def release_pool(s: Services, r: m.PoolRequest) -> dict[str, Any]:
    await s.worker.run(s.ipam.release_pool, r.PoolID)
    return {}


async def request_address(s: Services, r: m.RequestAddressRequest) -> dict[str, Any]:
    address = await s.worker.run(s.ipam.request_address, r.PoolID, r.Address, r.Options)
    return {"Address": address, "Data": {}}


async def release_address(s: Services, r: m.ReleaseAddressRequest) -> dict[str, Any]:
    await s.worker.run(s.ipam.release_address, r.PoolID, r.Address)
    return {}


async def status(s: Services, _: None) -> dict[str, Any]:
    return await s.status.snapshot()


VERBS: dict[str, Verb] = {
    "/Plugin.Activate": Verb(None, activate),
    "/NetworkDriver.GetCapabilities": Verb(None, net_capabilities),
    "/NetworkDriver.CreateNetwork": Verb(m.CreateNetworkRequest, create_network),
    "/NetworkDriver.DeleteNetwork": Verb(m.NetworkRequest, delete_network),
    "/NetworkDriver.AllocateNetwork": Verb(m.AllocateNetworkRequest, allocate_network),
    "/NetworkDriver.FreeNetwork": Verb(m.NetworkRequest, free_network),
    "/NetworkDriver.CreateEndpoint": Verb(m.CreateEndpointRequest, create_endpoint),
    "/NetworkDriver.EndpointOperInfo": Verb(m.EndpointRequest, oper_info),
    "/NetworkDriver.DeleteEndpoint": Verb(m.EndpointRequest, delete_endpoint),
    "/NetworkDriver.Join": Verb(m.JoinRequest, join),
    "/NetworkDriver.Leave": Verb(m.EndpointRequest, leave),
    "/NetworkDriver.ProgramExternalConnectivity": Verb(m.ProgramRequest, program),
    "/NetworkDriver.RevokeExternalConnectivity": Verb(m.EndpointRequest, revoke),
    "/NetworkDriver.DiscoverNew": Verb(m.DiscoveryRequest, discover),
    "/NetworkDriver.DiscoverDelete": Verb(m.DiscoveryRequest, discover),
    "/NetworkDriver.GwAllocCheck": Verb(m.GwAllocCheckRequest, gw_alloc_check),
    "/IpamDriver.GetCapabilities": Verb(None, ipam_capabilities),
    "/IpamDriver.GetDefaultAddressSpaces": Verb(None, address_spaces),
    "/IpamDriver.RequestPool": Verb(m.RequestPoolRequest, request_pool),
    "/IpamDriver.ReleasePool": Verb(m.PoolRequest, release_pool),
    "/IpamDriver.RequestAddress": Verb(m.RequestAddressRequest, request_address),
    "/IpamDriver.ReleaseAddress": Verb(m.ReleaseAddressRequest, release_address),
    f"/{STATUS_VERB}": Verb(None, status),
}
