"""Configuration of one pool manager process: where it listens, which store it uses, and its timings.

`fargpu pool-manager` builds one from flags and FARGPU_POOL_* environment variables; in-process users (the
demo, tests, the benchmark) construct it directly. Port 0 means "any free port" (read the bound ports back from
`PoolManager.rest_port` / `grpc_port`).

The state directory (`$XDG_STATE_HOME/fargpu`, else `~/.local/state/fargpu`) holds what one machine shares
between its pool manager and node servers: the embedded store's file, the enrolment token (`enrol-token`,
which the pool manager creates once and a node on the same machine reads: zero configuration on one machine)
a node's own credentials (`node-credentials/<node id>`) and the local API key (`api-key`, see tenants.py: the
pool manager creates it, clients on the machine present it). The helpers for these paths live in state_paths.py
(which a node server imports without this module's imports of the pool manager's service) and are re-exported
here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fargpu.pool_manager.autoscaler import AutoscalerConfig
from fargpu.pool_manager.placement import Strategy
from fargpu.pool_manager.service_core import ServiceConfig
from fargpu.pool_manager.state_paths import enrol_token_file as enrol_token_file  # re-exported
from fargpu.pool_manager.state_paths import node_credentials_dir as node_credentials_dir
from fargpu.pool_manager.state_paths import state_dir as state_dir

DEFAULT_REST_PORT = 7000
DEFAULT_GRPC_PORT = 7001


def default_state_file() -> Path:
    return state_dir() / "pool-state.json"


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
    enrol_token: str | None = None  # nodes' bootstrap secret; None: the one in enrol_token_file(), made once
    local_key: bool = True  # create/read the state dir's api-key and accept it as a key of tenant "local"
    tenant_keys: list[str] = field(default_factory=list)  # keys to accept for tenant "local" too (containers)
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 10.0  # silence after which a node is down and its leases are lost
    stale_after_s: float | None = 1.5  # silence after which other nodes are preferred for new leases (None: off)
    adopt_grace_s: float | None = None  # re-adoption window after start / store outage; None: heartbeat_timeout_s
    sweep_interval_s: float = 1.0
    default_ttl_s: float = 300.0
    strategy: Strategy = Strategy.pack
    command_wait_s: float = 1.0
    max_sessions_per_lease: int = 16
    default_idle_timeout_s: float = 300.0  # leases that name no idle timeout get this one; 0: never idle-paged
    overcommit_ratio: float = 1.0  # leases may book VRAM up to capacity x this (>= 1); a node may register its own
    log_level: str = "info"
    # TLS (tls.py): "auto" (on when REST or gRPC listens beyond loopback), "on" or "off"; files from flags or
    # FARGPU_TLS_*, else the machine's development CA. node_cert_days: validity of node certificates it issues.
    tls: str = "auto"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_ca_key: str | None = None
    node_cert_days: float = 90.0
    # Node providers and the autoscaler (providers/, autoscaler.py). provider "none": nodes come and go by hand.
    provider: str = "none"  # "none" | "local" | "kubernetes"
    min_nodes: int = 0
    max_nodes: int = 4
    node_idle_s: float = 60.0  # a provider's node with no lease and no session this long is stopped
    park_idle_s: float = 0.0  # sessions idle this long are paged out, then parked where their node can (0: off)
    scale_interval_s: float = 1.0
    scale_up_wait_s: float = 120.0  # a request finding no room waits this long for a node the autoscaler starts
    scale_down_cooldown_s: float = 30.0
    node_start_timeout_s: float = 180.0
    local_backend: str = "auto"  # local provider: the node servers' --backend
    local_node_args: list[str] = field(default_factory=list)  # local provider: more `fargpu server` flags
    local_log_dir: Path | None = None
    kube_namespace: str = "default"
    kube_deployment: str = "fargpu-node"
    kube_config: str | None = None  # kubeconfig file; None: in-cluster credentials, else $KUBECONFIG / ~/.kube

    def service_config(self) -> ServiceConfig:
        return ServiceConfig(
            heartbeat_interval_s=self.heartbeat_interval_s,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
            sweep_interval_s=self.sweep_interval_s,
            default_ttl_s=self.default_ttl_s,
            strategy=self.strategy,
            max_sessions_per_lease=self.max_sessions_per_lease,
            default_idle_timeout_s=self.default_idle_timeout_s,
            overcommit_ratio=self.overcommit_ratio,
            scale_up_wait_s=self.scale_up_wait_s,
            stale_after_s=self.stale_after_s,
            adopt_grace_s=self.heartbeat_timeout_s if self.adopt_grace_s is None else self.adopt_grace_s,
        )

    def autoscaler_config(self) -> AutoscalerConfig:
        return AutoscalerConfig(
            min_nodes=self.min_nodes,
            max_nodes=self.max_nodes,
            node_idle_s=self.node_idle_s,
            park_idle_s=self.park_idle_s,
            interval_s=self.scale_interval_s,
            lock_ttl_s=max(10.0, 5 * self.scale_interval_s),
            start_timeout_s=self.node_start_timeout_s,
            scale_down_cooldown_s=self.scale_down_cooldown_s,
        )
