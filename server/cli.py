"""`fargpu server`: run a node server on this machine (the real GPU if there is one, else the simulated
device — it says which). With --pool it registers with a pool manager and accepts lease tokens; otherwise
it accepts one static token (FARGPU_TOKEN).

Every socket (the session listeners and /metrics) is bound before the node registers with the pool, so a node
that cannot serve never registers; a busy port ends the program with one line naming the port and its flag.
A node listening on a wildcard address (0.0.0.0, ::) advertises --advertise HOST:PORT to the pool, or, without
it, this machine's first non-loopback address (it logs which)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import ssl
from typing import TYPE_CHECKING, Annotated

import typer

from fargpu import timeline
from fargpu.pool_manager.tls import TlsConfigError
from fargpu.pool_manager.units import parse_size

from .auth import Authenticator, StaticTokenAuth
from .backend import select
from .node_agent import AgentConfig, NodeAgent, default_unix_path
from .park.arena import DEFAULT_ARENA, parse_arena
from .tls import DataTls

if TYPE_CHECKING:
    from .metrics import NodeMetrics

app = typer.Typer(help="Run a fargpu node server.", invoke_without_command=True, no_args_is_help=False)


def _run_uvloop(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


log = logging.getLogger("fargpu.server")
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


class PortBusy(Exception):
    """A port this node server needs is taken; the message names it and the flag that changes it."""


def _busy(exc: OSError, what: str, host: str, port: int, flag: str) -> PortBusy:
    if exc.errno == errno.EADDRINUSE:
        return PortBusy(f"{what} port {port} on {host} is already in use by another program: stop it, or choose "
                        f"another port with {flag}")  # fmt: skip
    if exc.errno == errno.EADDRNOTAVAIL:
        return PortBusy(f"cannot listen on {host}:{port} for {what}: no interface of this machine has address "
                        f"{host}; choose another with {flag}")  # fmt: skip
    if exc.errno == errno.EACCES:
        return PortBusy(f"no permission to listen on {what} port {port} (ports below 1024 need root); choose "
                        f"another with {flag}")  # fmt: skip
    return PortBusy(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}; choose another with {flag}")


def local_address() -> str:
    """This machine's first non-loopback address (the one its default route leaves from), else its hostname."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the outgoing interface
        addr = str(s.getsockname()[0])
        if not addr.startswith("127."):
            return addr
    name = socket.gethostname()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM):
            addr = str(info[4][0])
            if not addr.startswith("127."):
                return addr
    return name


async def serve(agent: NodeAgent, pool_url: str | None = None, metrics_port: int = -1, enrol_token: str = "",
                overcommit: float = 0.0, metrics_host: str = "127.0.0.1", pool_grpc: str = "") -> None:
    listen = agent.config.listen or ""
    try:
        await agent.start()
    except OSError as exc:
        with contextlib.suppress(Exception):
            await agent.stop()
        if not listen:
            raise PortBusy(f"cannot listen on the unix socket {agent.config.unix_path}: {exc.strerror or exc}; "
                           "choose another path with --unix PATH") from None
        host, _, port = listen.rpartition(":")
        raise _busy(exc, "the session listener's", host or "127.0.0.1", int(port), "--listen HOST:PORT") from None
    timeline.mark("node.listening", os.environ.get("FARGPU_NODE_ID", ""))
    host = listen.rpartition(":")[0]
    if listen and not agent.config.advertise and host in _WILDCARDS:
        agent.endpoint = f"{local_address()}:{agent.tcp_port}"
        log.info("listening on %s; advertising %s to clients and the pool (set --advertise HOST:PORT to change it)",
                 listen, agent.endpoint)  # fmt: skip
    metrics: NodeMetrics | None = None
    if metrics_port >= 0:  # bound before the node registers: a node that cannot serve never registers
        from .metrics import NodeMetrics  # here: prometheus_client takes a while to import, and -1 needs none

        metrics = NodeMetrics(agent, None)
        try:
            bound = await metrics.serve(metrics_host, metrics_port)
        except OSError as exc:
            with contextlib.suppress(Exception):
                await agent.stop()
            raise _busy(exc, "the Prometheus metrics", metrics_host, metrics_port,
                        "--metrics-port PORT (0: any free port, -1: off)") from None  # fmt: skip
        log.info("Prometheus metrics on http://%s:%d/metrics", metrics_host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    link = None
    if pool_url:
        from .pool_link import PoolLink  # written with the pool manager

        # enrol_token None: FARGPU_ENROL_TOKEN or the state file; overcommit 0: the pool's ratio
        link = PoolLink(agent, pool_url, enrol_token=enrol_token or None, overcommit=overcommit,
                        grpc_target=pool_grpc or None)
        if metrics is not None:
            metrics.link = link
        await link.start()
    await stop.wait()
    if metrics is not None:
        await metrics.stop()
    if link is not None:
        await link.stop()
    await agent.stop()


@app.callback()
def main(
    listen: Annotated[str, typer.Option(envvar="FARGPU_LISTEN", help="TCP host:port ('' for none)")] = "127.0.0.1:7100",
    unix: Annotated[str, typer.Option(envvar="FARGPU_UNIX_SOCKET", help="unix socket path ('' for none)")] = "",
    backend: Annotated[str, typer.Option(envvar="FARGPU_BACKEND", help="auto, cuda or sim")] = "auto",
    token: Annotated[str, typer.Option(envvar="FARGPU_TOKEN", help="static token clients must present")] = "",
    vram_quota: Annotated[
        int, typer.Option(help="with a static token: VRAM quota in bytes for all its sessions together (0: none)")
    ] = 0,
    ctx_charge: Annotated[
        str, typer.Option(envvar="FARGPU_CTX_CHARGE", help="VRAM charged to a lease per context a session creates")
    ] = "512M",
    host_page_pool: Annotated[
        str, typer.Option(envvar="FARGPU_HOST_PAGE_POOL", help="host memory for paged-out sessions (then disk)")
    ] = "4G",
    host_pool_kind: Annotated[
        str, typer.Option(envvar="FARGPU_HOST_POOL_KIND",
                          help="the host pool's memory: vmm (pinned driver memory, paged by DMA), memfd, or auto "
                               "(vmm on a real GPU where the driver can make it)")
    ] = "auto",
    host_pool_slab_mb: Annotated[
        int, typer.Option(envvar="FARGPU_HOST_POOL_SLAB_MB", min=0,
                          help="a vmm host pool is slabs of this many MiB, each mapped whole for a step (0: 256; "
                               "grown so the pool needs at most 512)")
    ] = 0,
    spill_dir: Annotated[
        str, typer.Option(envvar="FARGPU_SPILL_DIR", help="where page-out spills when the host pool is full "
                          "[default: $XDG_STATE_HOME/fargpu/spill]", show_default=False)
    ] = "",
    resident_limit: Annotated[
        str, typer.Option(envvar="FARGPU_RESIDENT_LIMIT", help="VRAM sessions may hold resident at once "
                          "[default: the GPUs' memory]", show_default=False)
    ] = "",
    idle_page_out: Annotated[
        float, typer.Option(envvar="FARGPU_IDLE_PAGE_OUT", help="page out sessions idle this many seconds, where "
                            "their lease allows (0: only when the pool or memory pressure asks)")
    ] = 0.0,
    deep_after: Annotated[
        float, typer.Option(envvar="FARGPU_DEEP_AFTER", help="take sessions paged out this many seconds to the deeper "
                            "level: the driver's process checkpoint frees their context too (0: only when asked; "
                            "real GPUs only)")
    ] = 0.0,
    park_store: Annotated[
        str, typer.Option(envvar="FARGPU_PARK_STORE", help="where parked sessions go: a directory (shared by the "
                          "nodes that may resume them), s3://BUCKET/PREFIX, or off [default: $XDG_STATE_HOME/fargpu/"
                          "park]", show_default=False)
    ] = "",
    idle_park: Annotated[
        float, typer.Option(envvar="FARGPU_IDLE_PARK", help="park sessions paged out and idle this many seconds off "
                            "the node (0: only when the pool asks)")
    ] = 0.0,
    linger: Annotated[
        float, typer.Option(envvar="FARGPU_WORKER_LINGER_S", min=0.0, help="keep a session whose client connection "
                            "dropped (a network blip) this many seconds for its client to reconnect and go on, bulk "
                            "copies in flight included (0: the session ends with its connection)")
    ] = 0.0,
    arena: Annotated[
        str, typer.Option(envvar="FARGPU_ARENA", help="BASE[:SIZE] (hex base, size like 16T) of the device address "
                          "range where sessions' allocations go, so that a parked session gets its addresses back on "
                          "another node (use the same on every node); off: anywhere")
    ] = DEFAULT_ARENA,
    stable_addresses: Annotated[
        bool, typer.Option(envvar="FARGPU_STABLE_ADDRESSES", help="run session workers without address-space "
                           "randomisation, so that a parked session gets its device addresses back on a real GPU "
                           "(the driver places them itself); --no-stable-addresses keeps workers randomised, and "
                           "parked sessions may then fail to restore (they stay parked, never resumed wrong)")
    ] = True,
    max_sessions_per_lease: Annotated[
        int,
        typer.Option(envvar="FARGPU_MAX_SESSIONS_PER_LEASE", min=1, help="sessions a lease may hold here at once, "
                     "where the pool does not say"),
    ] = 16,
    pool: Annotated[str, typer.Option(envvar="FARGPU_POOL_URL", help="register with this pool manager")] = "",
    pool_grpc: Annotated[
        str, typer.Option(envvar="FARGPU_POOL_GRPC", help="with --pool: the pool manager's gRPC HOST:PORT "
                          "[default: asked from the pool's /v1/info]", show_default=False)
    ] = "",
    enrol_token: Annotated[
        str,
        typer.Option(
            envvar="FARGPU_ENROL_TOKEN",
            help="the pool's enrolment token (default: the state directory's enrol-token file, as a pool manager "
            "on this machine writes it)",
            show_default=False,
        ),
    ] = "",
    overcommit: Annotated[
        float | None, typer.Option(envvar="FARGPU_OVERCOMMIT", min=1.0, help="with --pool: let the pool book this "
                                   "node's GPUs up to their memory x this ratio (idle sessions page out to make room) "
                                   "[default: the pool's]", show_default=False)
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="FARGPU_LOG_LEVEL")] = "INFO",
    metrics_port: Annotated[
        int, typer.Option(envvar="FARGPU_METRICS_PORT", help="Prometheus /metrics port (0: any, -1: off)")
    ] = 9400,
    metrics_host: Annotated[
        str, typer.Option(envvar="FARGPU_METRICS_HOST", help="address /metrics listens on (0.0.0.0: every "
                          "interface, so that Prometheus on another host can scrape it)")
    ] = "127.0.0.1",
    advertise: Annotated[
        str, typer.Option(envvar="FARGPU_ADVERTISE", help="HOST:PORT clients and the pool reach this node at "
                          "[default: the --listen address; for 0.0.0.0 or ::, this machine's first non-loopback "
                          "address]", show_default=False)
    ] = "",
    tls: Annotated[str, typer.Option(envvar="FARGPU_TLS", help="auto (TLS for clients of other machines when "
                                     "listening beyond loopback), on or off")] = "auto",
    tls_cert: Annotated[str, typer.Option(envvar="FARGPU_TLS_CERT", show_default=False,
                                          help="this node's certificate (PEM) [default: from a TLS pool at "
                                          "enrolment, else this machine's development CA]")] = "",
    tls_key: Annotated[str, typer.Option(envvar="FARGPU_TLS_KEY", show_default=False, help="its key (PEM)")] = "",
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = os.environ.get("FARGPU_NODE_ID", "")
    timeline.mark_process_start("node.exec", node)
    timeline.mark("node.imported", node)
    try:
        be = select(backend)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    timeline.mark("node.backend", f"{node} {be.name}")
    auth: Authenticator
    if pool:
        from .pool_link import LeaseTokenAuth

        auth = LeaseTokenAuth()
    else:
        if not token:
            token = secrets.token_urlsafe(24)
            typer.echo(f"no FARGPU_TOKEN given; generated one for this run: export FARGPU_TOKEN={token}")
        auth = StaticTokenAuth(token, vram_quota or None)
    sizes: dict[str, int | None] = {}
    for flag, text in (("--ctx-charge", ctx_charge), ("--host-page-pool", host_page_pool),
                       ("--resident-limit", resident_limit)):
        try:
            sizes[flag] = None if not text.strip() else 0 if text.strip() == "0" else parse_size(text)
        except ValueError as exc:
            typer.secho(f"error: {flag}: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
    if linger > 0:  # read by the session workers (server/replay/reattach.c) and the agent, which inherit it
        os.environ["FARGPU_WORKER_LINGER_S"] = f"{linger:g}"
    try:
        arena_spec = parse_arena(arena)
    except ValueError as exc:
        typer.secho(f"error: --arena: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    cfg = AgentConfig(listen=listen or None, unix_path=unix or (default_unix_path() if not listen else None),
                      max_sessions_per_lease=max_sessions_per_lease, ctx_charge=sizes["--ctx-charge"] or 0,
                      host_pool_bytes=sizes["--host-page-pool"] or 0, resident_limit=sizes["--resident-limit"],
                      spill_dir=spill_dir or None, idle_page_out_s=idle_page_out or None,
                      deep_after_s=deep_after or None,
                      advertise=advertise or None, park_store=park_store or None, idle_park_s=idle_park or None,
                      arena=arena_spec, host_pool_kind=host_pool_kind, stable_addresses=stable_addresses,
                      host_pool_slab_mb=host_pool_slab_mb)
    if host_pool_kind not in ("auto", "vmm", "memfd"):
        typer.secho(f"error: --host-pool-kind {host_pool_kind!r}: use auto, vmm or memfd", fg="red", err=True)
        raise typer.Exit(2)
    agent = NodeAgent(be, auth, cfg)
    timeline.mark("node.agent", node)
    if tls not in ("auto", "on", "off"):
        typer.secho("error: --tls: expected auto, on or off", fg="red", err=True)
        raise typer.Exit(2)
    try:
        host = (listen or "").rpartition(":")[0]
        agent.data_tls = DataTls(tls, host, tls_cert or None, tls_key or None,
                                 pool_issues=pool.startswith("https://"),
                                 advertise_host=(advertise or "").rpartition(":")[0])  # fmt: skip
    except (OSError, ssl.SSLError, TlsConfigError) as exc:
        typer.secho(f"error: TLS: {exc}; check --tls-cert/--tls-key (or --tls off)", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"fargpu node server: backend {be.describe()}")
    if be.simulated:
        typer.secho("NOTE: the simulated device is a test double; nothing here runs on a GPU.", fg="yellow")
    try:
        _run_uvloop(serve(agent, pool or None, metrics_port, enrol_token, overcommit or 0.0, metrics_host,
                          pool_grpc))
    except PortBusy as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
