"""Runtime settings: flags override ``PYOVERLAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from driver.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR

LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PYOVERLAY_", extra="ignore")

    socket: Path = Path(DEFAULT_SOCKET)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    log_level: LogLevel = "info"
    # Pools handed out when a network asks for none (``docker network create`` without
    # ``--subnet`` and ``--ipam-driver pyoverlay``). Kept clear of Docker's own defaults
    # (172.17-31/16, 192.168/16) so both IPAMs can serve one dockerd without overlapping.
    default_pools_v4: list[str] = Field(default_factory=lambda: ["10.200.0.0/13:24"])
    default_pools_v6: list[str] = Field(default_factory=lambda: ["fd70:7079:6f76::/48:64"])
    # Upper bound on one iptables-restore run; a wedged xtables lock must not hang dockerd.
    firewall_timeout: float = 10.0
    # Upper bound on any one call, so dockerd (which has no timeout) always gets an answer.
    request_timeout: float = 30.0
    # Test hook: make the named rollback step fail (see driver.network.steps).
    fail_step: str | None = None
