"""`fargpu pool-manager`: runs a pool manager (REST + gRPC) until SIGINT/SIGTERM. Every flag also reads a
FARGPU_POOL_* environment variable (the admin token reads FARGPU_ADMIN_TOKEN, the enrolment token
FARGPU_ENROL_TOKEN). Without an enrolment token the pool manager uses `<state dir>/enrol-token`, creating it
once; node servers on the same machine read it, so one machine needs no configuration."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Annotated

import typer

from fargpu.pool_manager.config import (
    DEFAULT_GRPC_PORT,
    DEFAULT_REST_PORT,
    PoolManagerConfig,
    default_state_file,
    enrol_token_file,
)
from fargpu.pool_manager.enrolment import ENROL_TOKEN_ENV, EnrolTokenFileError
from fargpu.pool_manager.placement import Strategy
from fargpu.pool_manager.providers import PROVIDERS, ProviderError
from fargpu.pool_manager.server import PoolManager, run_pool_manager
from fargpu.pool_manager.store_embedded import StateFileInUse
from fargpu.pool_manager.tls import TlsConfigError


def pool_manager(
    host: Annotated[str, typer.Option(envvar="FARGPU_POOL_HOST", help="REST listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FARGPU_POOL_PORT", help="REST port")] = DEFAULT_REST_PORT,
    grpc_host: Annotated[str, typer.Option(envvar="FARGPU_POOL_GRPC_HOST", help="gRPC listen address")] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option(envvar="FARGPU_POOL_GRPC_PORT", help="gRPC port")] = DEFAULT_GRPC_PORT,
    store: Annotated[str, typer.Option(envvar="FARGPU_POOL_STORE", help="embedded | redis")] = "embedded",
    redis_url: Annotated[
        str, typer.Option(envvar="FARGPU_POOL_REDIS_URL", help="Redis URL (--store redis)")
    ] = "redis://127.0.0.1:6379/0",
    redis_prefix: Annotated[str, typer.Option(envvar="FARGPU_POOL_REDIS_PREFIX", help="key prefix")] = "fargpu:",
    state_file: Annotated[
        Path | None,
        typer.Option(envvar="FARGPU_POOL_STATE_FILE", help=f"embedded store's file [default: {default_state_file()}]"),
    ] = None,
    memory_only: Annotated[bool, typer.Option(help="embedded store without a state file")] = False,
    fsync: Annotated[bool, typer.Option(envvar="FARGPU_POOL_FSYNC", help="fsync every state change")] = False,
    admin_token: Annotated[
        str | None, typer.Option(envvar="FARGPU_ADMIN_TOKEN", help="token for the admin endpoints (drain, evict)")
    ] = None,
    enrol_token: Annotated[
        str | None,
        typer.Option(
            envvar=ENROL_TOKEN_ENV,
            help=f"secret that node servers enrol with [default: the one in {enrol_token_file()}, made once]",
            show_default=False,
        ),
    ] = None,
    max_sessions_per_lease: Annotated[
        int,
        typer.Option(
            envvar="FARGPU_POOL_MAX_SESSIONS_PER_LEASE",
            min=0,
            help="sessions one lease may hold open on its node at once (0: no limit)",
        ),
    ] = 16,
    heartbeat_interval: Annotated[
        float, typer.Option(envvar="FARGPU_POOL_HEARTBEAT_INTERVAL", help="seconds between a node's heartbeats")
    ] = 0.5,
    stale_after: Annotated[
        float,
        typer.Option(envvar="FARGPU_POOL_STALE_AFTER", min=0,
                     help="silence after which a node gets new leases only when no other node has room (0: off)"),
    ] = 1.5,
    heartbeat_timeout: Annotated[
        float, typer.Option(envvar="FARGPU_POOL_HEARTBEAT_TIMEOUT", help="silence after which a node is down")
    ] = 10.0,
    default_ttl: Annotated[float, typer.Option(envvar="FARGPU_POOL_DEFAULT_TTL", help="lease TTL, seconds")] = 300.0,
    strategy: Annotated[Strategy, typer.Option(envvar="FARGPU_POOL_STRATEGY", help="placement")] = Strategy.pack,
    idle_timeout: Annotated[
        float,
        typer.Option(
            envvar="FARGPU_POOL_IDLE_TIMEOUT",
            min=0,
            help="seconds a session may sit idle before its node pages it out, for leases that name none "
            "(0: never idle-paged)",
        ),
    ] = 300.0,
    overcommit: Annotated[
        float,
        typer.Option(
            envvar="FARGPU_POOL_OVERCOMMIT",
            min=1.0,
            help="leases may book up to each GPU's memory x this ratio (idle sessions page out to make room); "
            "guaranteed leases always fit real memory; a node's own --overcommit wins",
        ),
    ] = 1.0,
    provider: Annotated[
        str,
        typer.Option(
            envvar="FARGPU_POOL_PROVIDER",
            help="who starts and stops GPU nodes: none (by hand), local (node server processes on this machine) or "
            "kubernetes (scales the node agents' Deployment)",
        ),
    ] = "none",
    min_nodes: Annotated[int, typer.Option(envvar="FARGPU_POOL_MIN_NODES", min=0, help="nodes kept running")] = 0,
    max_nodes: Annotated[
        int, typer.Option(envvar="FARGPU_POOL_MAX_NODES", min=0, help="most nodes the provider may run")
    ] = 4,
    node_idle_s: Annotated[
        float,
        typer.Option(
            envvar="FARGPU_POOL_NODE_IDLE_S", min=0, help="a provider's node with no lease and no session this long "
            "is drained and stopped"
        ),
    ] = 60.0,
    park_idle_s: Annotated[
        float,
        typer.Option(
            envvar="FARGPU_POOL_PARK_IDLE_S", min=0, help="sessions idle this long are paged out, then parked where "
            "their node offers it (0: off)"
        ),
    ] = 0.0,
    scale_up_wait_s: Annotated[
        float,
        typer.Option(
            envvar="FARGPU_POOL_SCALE_UP_WAIT_S", min=0, help="a lease request that finds no room waits this long for "
            "a node the provider starts"
        ),
    ] = 120.0,
    local_backend: Annotated[
        str, typer.Option(envvar="FARGPU_POOL_LOCAL_BACKEND", help="--provider local: the node servers' --backend")
    ] = "auto",
    local_node_args: Annotated[
        str, typer.Option(envvar="FARGPU_POOL_LOCAL_NODE_ARGS", help="--provider local: more `fargpu server` flags")
    ] = "",
    kube_namespace: Annotated[
        str, typer.Option(envvar="FARGPU_POOL_KUBE_NAMESPACE", help="--provider kubernetes: the namespace")
    ] = "default",
    kube_deployment: Annotated[
        str,
        typer.Option(envvar="FARGPU_POOL_KUBE_DEPLOYMENT", help="--provider kubernetes: the node agents' Deployment"),
    ] = "fargpu-node",
    kube_config: Annotated[
        str,
        typer.Option(
            envvar="FARGPU_POOL_KUBE_CONFIG", help="--provider kubernetes: kubeconfig file [default: in-cluster "
            "credentials, else $KUBECONFIG or ~/.kube/config]", show_default=False
        ),
    ] = "",
    local_key: Annotated[
        bool,
        typer.Option(envvar="FARGPU_POOL_LOCAL_KEY", help="create and accept this machine's local API key "
                     "(<state dir>/api-key, tenant 'local'): clients of this user need no configuration"),
    ] = True,
    tenant_key: Annotated[
        str | None,
        typer.Option(envvar="FARGPU_POOL_TENANT_KEY", show_default=False,
                     help="an API key to accept for tenant 'local' besides the local key file (clients in other "
                     "containers or machines of a small set-up; make real tenants with fargpu pool tenants/keys)"),
    ] = None,
    tls: Annotated[
        str,
        typer.Option(envvar="FARGPU_TLS", help="auto (TLS when REST or gRPC listens beyond loopback), on or off; "
                     "with TLS, nodes enrol over HTTPS and present certificates on gRPC (mTLS)"),
    ] = "auto",
    tls_cert: Annotated[str | None, typer.Option(envvar="FARGPU_TLS_CERT", show_default=False,
                                                 help="server certificate (PEM) [default: a development CA's]")] = None,
    tls_key: Annotated[str | None, typer.Option(envvar="FARGPU_TLS_KEY", show_default=False,
                                                help="its private key (PEM)")] = None,
    tls_ca: Annotated[str | None, typer.Option(envvar="FARGPU_TLS_CA", show_default=False,
                                               help="the CA clients and nodes verify against (PEM)")] = None,
    tls_ca_key: Annotated[str | None, typer.Option(envvar="FARGPU_TLS_CA_KEY", show_default=False,
                                                   help="the CA's key: issue node certificates at enrolment")] = None,
    node_cert_days: Annotated[float, typer.Option(envvar="FARGPU_POOL_NODE_CERT_DAYS", min=0.001,
                                                  help="validity of the node certificates this pool issues")] = 90.0,
    log_level: Annotated[str, typer.Option(envvar="FARGPU_LOG_LEVEL")] = "info",
) -> None:
    """Run the pool manager: lease REST API (docs at /docs, metrics at /metrics) and the node gRPC service."""
    if store not in ("embedded", "redis"):
        raise typer.BadParameter("expected 'embedded' or 'redis'", param_hint="--store")
    if provider not in PROVIDERS:
        raise typer.BadParameter(f"expected one of {', '.join(PROVIDERS)}", param_hint="--provider")
    if tls not in ("auto", "on", "off"):
        raise typer.BadParameter("expected auto, on or off", param_hint="--tls")
    if min_nodes > max_nodes:
        raise typer.BadParameter(f"--min-nodes {min_nodes} is above --max-nodes {max_nodes}", param_hint="--min-nodes")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = PoolManagerConfig(
        host=host,
        port=port,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        store=store,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        state_file=None if memory_only else (state_file or default_state_file()),
        fsync=fsync,
        admin_token=admin_token or None,
        enrol_token=enrol_token or None,
        max_sessions_per_lease=max_sessions_per_lease,
        heartbeat_interval_s=heartbeat_interval,
        heartbeat_timeout_s=heartbeat_timeout,
        stale_after_s=stale_after or None,
        default_ttl_s=default_ttl,
        strategy=strategy,
        default_idle_timeout_s=idle_timeout,
        overcommit_ratio=overcommit,
        local_key=local_key,
        tenant_keys=[tenant_key] if tenant_key else [],
        log_level=log_level.lower(),
        provider=provider,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        node_idle_s=node_idle_s,
        park_idle_s=park_idle_s,
        scale_up_wait_s=scale_up_wait_s,
        local_backend=local_backend,
        local_node_args=shlex.split(local_node_args),
        kube_namespace=kube_namespace,
        kube_deployment=kube_deployment,
        kube_config=kube_config or None,
        tls=tls,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        tls_ca_key=tls_ca_key,
        node_cert_days=node_cert_days,
    )

    def ready(pm: PoolManager) -> None:
        where = f"state file {config.state_file}" if store == "embedded" else f"Redis {redis_url}"
        typer.echo(
            f"fargpu pool manager: REST {pm.rest_url} (docs {pm.rest_url}/docs), gRPC {pm.grpc_target}, "
            f"{store} store ({where if config.state_file or store == 'redis' else 'memory only'})",
            err=True,
        )
        if pm.tls is not None:
            made = " (development CA of this machine)" if pm.tls.development else ""
            issues = "issues node certificates" if pm.tls.ca_key else "issues no node certificates (no CA key)"
            typer.echo(f"fargpu pool manager: TLS on REST and gRPC (mTLS); clients verify against {pm.tls.ca}{made}; "
                       f"elsewhere set FARGPU_TLS_CA to a copy of it; it {issues}", err=True)  # fmt: skip
        if pm.enrol_token_file is not None:
            shared = "; pool managers elsewhere that share this Redis need the same token" if store == "redis" else ""
            typer.echo(
                f"fargpu pool manager: nodes enrol with the token in {pm.enrol_token_file} (node servers on this "
                f"machine read it; elsewhere set {ENROL_TOKEN_ENV} to its contents){shared}",
                err=True,
            )
        if pm.local_key_file is not None:
            typer.echo(f"fargpu pool manager: clients of this user on this machine use the local API key in "
                       f"{pm.local_key_file}; others need a key (fargpu pool keys create)", err=True)  # fmt: skip
        if admin_token is None:
            typer.echo("fargpu pool manager: no admin token set; drain and evict are disabled", err=True)
        if provider != "none":
            typer.echo(
                f"fargpu pool manager: {provider} provider, {min_nodes}-{max_nodes} node(s), idle nodes stop after "
                f"{node_idle_s:g}s",
                err=True,
            )

    try:
        run_pool_manager(config, ready)
    except (StateFileInUse, EnrolTokenFileError, ConnectionError, OSError, ProviderError, TlsConfigError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
