"""Network modes: one module per kind of plumbing, chosen with ``-o mode=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from driver.network.steps import Steps
from driver.state import EndpointRecord, NetworkRecord


@dataclass(frozen=True)
class JoinInfo:
    src_name: str
    dst_prefix: str
    gateway: str | None
    gateway_v6: str | None
    disable_gateway_service: bool = False


class Mode(Protocol):
    """Kernel plumbing of one network mode. Every method is idempotent."""

    def check_coexistence(self, net: NetworkRecord, other: NetworkRecord) -> None:
        """Raise ``Conflict`` if ``net`` cannot exist beside ``other`` (same mode)."""

    def shares_device(self, net: NetworkRecord, other: NetworkRecord) -> bool:
        """Whether ``other`` uses the device ``net`` may own (so it must outlive ``net``)."""

    def prepare_network(self, net: NetworkRecord) -> None:
        """Validate against the host and decide ``owns_device``; changes nothing."""

    def create_network(self, net: NetworkRecord, steps: Steps) -> None: ...

    def delete_network(self, net: NetworkRecord) -> None: ...

    def ensure_network(self, net: NetworkRecord) -> None:
        """Recreate whatever of the network is missing (after a reboot, at start)."""

    def create_endpoint(self, net: NetworkRecord, ep: EndpointRecord, steps: Steps) -> None: ...

    def delete_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None: ...

    def check_new_endpoint(self, net: NetworkRecord, existing: list[EndpointRecord]) -> None:
        """Raise ``Conflict`` if the network cannot take one more endpoint."""

    def assigns_mac(self, net: NetworkRecord) -> bool:
        """Whether endpoints get a MAC from the driver when dockerd asks for none."""

    def endpoint_names(self, endpoint_id: str) -> tuple[str, str]:
        """(host-side link or "", the link handed to dockerd as SrcName)."""

    def endpoint_alive(self, ep: EndpointRecord) -> bool:
        """Whether the endpoint's interface still exists (in our namespace or a sandbox)."""

    def device_names(self, net: NetworkRecord) -> set[str]:
        """Links this network owns in the driver's namespace (for orphan collection)."""


@runtime_checkable
class Restores(Protocol):
    """A mode with in-memory state about endpoints, rebuilt at start for the survivors."""

    def restore_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None: ...
