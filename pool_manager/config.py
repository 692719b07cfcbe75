"""Configuration of one pool manager process: where it listens, which store it uses, and its timings.

`fargpu pool-manager` builds one from flags and FARGPU_POOL_* environment variables; in-process users (the
demo, tests, the benchmark) construct it directly. Port 0 means "any free port" (read the bound ports back from
`PoolManager.rest_port` / `grpc_port`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fargpu.pool_manager.placement import Strategy
from fargpu.pool_manager.service import ServiceConfig

DEFAULT_REST_PORT = 7000
DEFAULT_GRPC_PORT = 7001


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fargpu" / "pool-state.json"


@dataclass
class PoolManagerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_REST_PORT
    grpc_host: str = "127.0.0.1"
    grpc_port: int = DEFAULT_GRPC_PORT
    store: str = "embedded"  # "embedded" | "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "fargpu:"
    state_file: Path | None = field(default_factory=default_state_file)  # embedded store; None: memory only
    fsync: bool = False
    admin_token: str | None = None
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 10.0
    sweep_interval_s: float = 1.0
    default_ttl_s: float = 300.0
    strategy: Strategy = Strategy.pack
    command_wait_s: float = 1.0
    log_level: str = "info"

    def service_config(self) -> ServiceConfig:
        return ServiceConfig(
            heartbeat_interval_s=self.heartbeat_interval_s,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
            sweep_interval_s=self.sweep_interval_s,
            default_ttl_s=self.default_ttl_s,
            strategy=self.strategy,
        )
