"""Wire models, named exactly as in moby's ``drivers/remote/api`` and ``ipams/remote/api``.

Requests are validated strictly (a string where a bool belongs is an error, not a
coercion) but tolerantly of what dockerd really sends: unknown fields are ignored and a
map may arrive as ``null``, ``{}`` or ``[]``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from driver.errors import InvalidRequest
from driver.network.options import check_sizes


def _empty_map(value: Any) -> Any:
    return {} if value is None or value == [] else value


def _empty_list(value: Any) -> Any:
    return [] if value is None else value


def _sized(value: dict[str, str]) -> dict[str, str]:
    try:
        check_sizes("", value)
    except InvalidRequest as err:
        raise ValueError(err.message) from None  # reported with the field's location
    return value


ID_PATTERN = r"^[A-Za-z0-9]{1,128}$"
# What RequestPool hands out: "<address space>/<CIDR>" (at most 59 characters). A PoolID
# names a store key, so nothing else may reach the store.
POOL_ID_PATTERN = r"^[A-Za-z0-9._:/-]{1,64}$"
ID = Annotated[str, Field(pattern=ID_PATTERN)]
PoolID = Annotated[str, Field(pattern=POOL_ID_PATTERN)]
Map = Annotated[dict[str, Any], BeforeValidator(_empty_map)]
# String maps are kept (pool options, aux addresses) or echoed back (AllocateNetwork).
StrMap = Annotated[dict[str, str], BeforeValidator(_empty_map), AfterValidator(_sized)]


class Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class IPAMData(Wire):
    AddressSpace: str = ""
    Pool: str = ""
    Gateway: str = ""
    AuxAddresses: StrMap = Field(default_factory=dict)


IPAMList = Annotated[list[IPAMData], BeforeValidator(_empty_list)]


class CreateNetworkRequest(Wire):
    NetworkID: ID
    Options: Map = Field(default_factory=dict)
    IPv4Data: IPAMList = Field(default_factory=list)
    IPv6Data: IPAMList = Field(default_factory=list)


class NetworkRequest(Wire):
    NetworkID: ID


class AllocateNetworkRequest(Wire):
    NetworkID: ID
    Options: StrMap = Field(default_factory=dict)


class EndpointRequest(Wire):
    NetworkID: ID
    EndpointID: ID


class EndpointInterface(Wire):
    Address: str = ""
    AddressIPv6: str = ""
    MacAddress: str = ""


class CreateEndpointRequest(EndpointRequest):
    Interface: EndpointInterface = Field(default_factory=EndpointInterface)
    Options: Map = Field(default_factory=dict)


class JoinRequest(EndpointRequest):
    SandboxKey: str = ""
    Options: Map = Field(default_factory=dict)


class ProgramRequest(EndpointRequest):
    Options: Map = Field(default_factory=dict)


class DiscoveryRequest(Wire):
    DiscoveryType: int
    DiscoveryData: Any = None


class GwAllocCheckRequest(Wire):
    Options: Map = Field(default_factory=dict)


class RequestPoolRequest(Wire):
    AddressSpace: str = ""
    Pool: str = ""
    SubPool: str = ""
    Options: StrMap = Field(default_factory=dict)
    V6: bool = False


class PoolRequest(Wire):
    PoolID: PoolID


class RequestAddressRequest(PoolRequest):
    Address: str = ""
    Options: Map = Field(default_factory=dict)


class ReleaseAddressRequest(PoolRequest):
    Address: Annotated[str, Field(min_length=1)]


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


_PATTERNS = {
    ID_PATTERN: "must be an ID of 1-128 letters and digits",
    POOL_ID_PATTERN: "must be a pool ID as RequestPool returns it (e.g. PyoverlayLocal/10.1.0.0/24)",
}


def _explain(err: Any) -> str:
    if err["type"] == "string_pattern_mismatch":
        return _PATTERNS.get(err.get("ctx", {}).get("pattern"), str(err["msg"]))
    if err["type"] == "value_error":  # our own validators' messages, without "Value error, "
        return str(err["ctx"]["error"])
    return str(err["msg"])


def parse(model: type[Wire], verb: str, data: Any) -> Any:
    """Validate a decoded body, turning pydantic's report into one ``InvalidRequest``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {_explain(e)}" for e in exc.errors()[:5])
        raise InvalidRequest(f"{verb}: invalid request: {problems}") from None
