"""Runs a pool manager: the store, the service, the REST API on uvicorn and the gRPC server, in one event loop.

In-process (tests, benchmark, the single-machine demo):

    async with PoolManager(PoolManagerConfig(port=0, grpc_port=0, state_file=None)) as pm:
        ...  # pm.rest_url, pm.grpc_target, pm.service, pm.enrol_token (what a PoolLink needs to enrol)

As a program: `fargpu pool-manager` (which calls `run_pool_manager`, on uvloop), or `serve_pool_manager(config)`
from a running loop; both stop cleanly on SIGINT/SIGTERM. uvicorn is embedded without its own signal handling,
so the owner of the loop decides when to stop.

Nodes enrol with the enrolment token: `config.enrol_token` if set, else the state directory's `enrol-token`
file, which the first pool manager on the machine creates (also with a memory-only store), so that node servers
on the same machine find it by themselves (see `enrolment.py`). Likewise the local API key (`tenants.py`): unless
`config.local_key` is off, the pool manager reads or creates `<state dir>/api-key` and registers it as a key of
the tenant "local" in its store, so clients on this machine need no configuration."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn

from fargpu.pool_manager.api import create_app
from fargpu.pool_manager.autoscaler import Autoscaler
from fargpu.pool_manager.config import PoolManagerConfig, enrol_token_file
from fargpu.pool_manager.enrolment import load_or_create_enrol_token
from fargpu.pool_manager.grpc_service import NodeRegistryService
from fargpu.pool_manager.node_enrol import enrol_router
from fargpu.pool_manager.providers import make_provider
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.store import Store
from fargpu.pool_manager.store_embedded import EmbeddedStore
from fargpu.pool_manager.store_redis import RedisStore
from fargpu.pool_manager.tenants import LOCAL_TENANT, load_or_create_local_key, local_key_file
from fargpu.pool_manager.tls import ServerFiles, server_files, wanted
from fargpu.protocol.generated import pool_pb2_grpc

if TYPE_CHECKING:
    from fargpu.pool_manager.tls_ca import CertificateAuthority

log = logging.getLogger("fargpu.pool_manager")


class _GrpcThread:
    """The gRPC server on its own event loop in its own thread.

    Sharing the REST loop starved gRPC: with the loop saturated by HTTP requests, node heartbeats stopped being
    answered at all (measured: 100 heartbeats/s before load, 0/s under load, on asyncio and uvloop alike), and
    healthy nodes were marked down. Here gRPC's I/O has a quiet loop of its own; each call's pool work is
    handed to the service's loop (`bridge`), where it queues fairly with the REST work."""

    def __init__(self, service: PoolService, command_wait_s: float, enrol_token: str,
                 tls: ServerFiles | None = None) -> None:  # fmt: skip
        self._tls = tls
        self._service = service
        self._wait = command_wait_s
        self._enrol_token = enrol_token
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fargpu-pool-grpc", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._home: asyncio.AbstractEventLoop | None = None

    async def _bridge(self, aw: Awaitable[Any]) -> Any:
        assert self._home is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_await(aw), self._home))

    async def _start(self, address: str) -> int:
        self._server = grpc.aio.server()
        pool_pb2_grpc.add_NodeRegistryServicer_to_server(
            NodeRegistryService(self._service, self._wait, bridge=self._bridge, enrol_token=self._enrol_token,
                                mtls=self._tls is not None),
            self._server,
        )
        if self._tls is not None:  # mTLS: every caller presents a certificate of the pool's CA
            creds = grpc.ssl_server_credentials([(self._tls.key.read_bytes(), self._tls.cert.read_bytes())],
                                                root_certificates=self._tls.ca.read_bytes(),
                                                require_client_auth=True)  # fmt: skip
            port = self._server.add_secure_port(address, creds)
        else:
            port = self._server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await self._server.start()
        return int(port)

    async def start(self, address: str) -> int:
        self._home = asyncio.get_running_loop()
        self._thread.start()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._start(address), self._loop))

    async def stop(self, grace_s: float) -> None:
        if self._server is not None:
            server = self._server
            self._server = None
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.stop(grace_s), self._loop))
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 5)
        if not self._loop.is_running():
            self._loop.close()


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the loop's owner handles signals


def make_store(config: PoolManagerConfig) -> Store:
    if config.store == "redis":
        return RedisStore(config.redis_url, prefix=config.redis_prefix)
    if config.store == "embedded":
        return EmbeddedStore(config.state_file, fsync=config.fsync)
    raise ValueError(f"unknown store {config.store!r}: expected 'embedded' or 'redis'")


class PortBusy(OSError):
    """A port the pool manager needs is taken (or not ours to use); the message names it and its flag."""


def _listen(host: str, port: int, what: str = "REST", flag: str = "--port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortBusy(f"the pool manager's {what} port {port} on {host} is already in use by another "
                           f"program: stop it, or choose another port with {flag}") from None  # fmt: skip
        raise PortBusy(f"cannot listen on {host}:{port} for {what}: {e.strerror}; choose another address "
                       f"or port with {flag}") from None  # fmt: skip
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class PoolManager:
    def __init__(
        self, config: PoolManagerConfig, *, store: Store | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.enrol_token_file: Path | None = None  # where the enrolment token came from (None: the config)
        if config.enrol_token:
            self.enrol_token = config.enrol_token
        else:
            self.enrol_token_file = enrol_token_file()
            self.enrol_token = load_or_create_enrol_token(self.enrol_token_file)
        self.local_key_file: Path | None = local_key_file() if config.local_key else None
        self.local_key: str | None = None  # read or made in start(), once the ports are known to be free
        self.store = store or make_store(config)
        self.service = PoolService(self.store, config.service_config(), clock=clock)
        self.app = create_app(self.service, config.admin_token)
        # TLS (tls.py): on for a pool reachable beyond loopback, unless turned off; then nodes enrol over HTTPS
        self.tls: ServerFiles | None = None
        if wanted(config.tls, [config.host, config.grpc_host]):
            self.tls = server_files(config.tls_cert, config.tls_key, config.tls_ca, config.tls_ca_key,
                                    [config.host, config.grpc_host])  # fmt: skip
            self.app.include_router(enrol_router(self.service, self.enrol_token, self._issuer(),
                                                 config.node_cert_days))  # fmt: skip
        self.autoscaler: Autoscaler | None = None
        self.rest_port = 0
        self.grpc_port = 0
        self._grpc: _GrpcThread | None = None
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._uvicorn_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def rest_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.rest_port}"

    def _issuer(self) -> CertificateAuthority | None:
        """The CA that signs node certificates at enrolment, when this pool has its key."""
        if self.tls is None or self.tls.ca_key is None:
            return None
        from fargpu.pool_manager.tls_ca import CertificateAuthority

        return CertificateAuthority.load(self.tls.ca, self.tls.ca_key)

    @property
    def grpc_target(self) -> str:
        return f"{self.config.grpc_host}:{self.grpc_port}"

    async def start(self) -> None:
        # Both ports are checked before anything else starts: a busy port is one line, not a half-started pool.
        sock = _listen(self.config.host, self.config.port)
        if self.config.grpc_port:
            try:
                _listen(self.config.grpc_host.strip("[]"), self.config.grpc_port, "gRPC", "--grpc-port").close()
            except PortBusy:
                sock.close()
                raise
        try:
            await self.store.open()
        except BaseException:
            sock.close()
            raise
        try:
            if self.local_key_file is not None:
                try:
                    self.local_key = load_or_create_local_key(self.local_key_file)
                except OSError as e:  # a read-only state dir (a container): clients then need a key given to them
                    log.warning("no local API key (%s); clients need FARGPU_API_KEY with a key of this pool", e)
                    self.local_key_file = None
            if self.local_key is not None:
                await self.service.ensure_api_key(LOCAL_TENANT, self.local_key, "local key of this machine")
            for key in self.config.tenant_keys:  # given by the operator (FARGPU_POOL_TENANT_KEY): never logged
                await self.service.ensure_api_key(LOCAL_TENANT, key, "given at start (--tenant-key)")
            await self.service.start()
            provider = make_provider(self.config, self._node_pool_url, self.enrol_token, self._node_grpc_target)
            if provider is not None:
                self.autoscaler = Autoscaler(self.service, provider, self.config.autoscaler_config())
                self.app.state.autoscaler = self.autoscaler
            self._grpc = _GrpcThread(self.service, self.config.command_wait_s, self.enrol_token, self.tls)
            grpc_address = f"{self.config.grpc_host}:{self.config.grpc_port}"
            try:
                self.grpc_port = await self._grpc.start(grpc_address)
            except RuntimeError as e:  # grpc's "Failed to bind": taken between the check above and now
                raise PortBusy(f"cannot listen for gRPC on {grpc_address} ({e}): choose another "
                               "port with --grpc-port") from None  # fmt: skip
            advertised = "" if self.config.grpc_host in ("", "0.0.0.0", "::", "[::]") else self.config.grpc_host
            self.app.state.grpc_address = (advertised, self.grpc_port)
            self.rest_port = sock.getsockname()[1]
            uv_config = uvicorn.Config(
                self.app,
                log_config=None,
                access_log=False,
                lifespan="off",
                log_level=self.config.log_level,
                # Longer than clients' renewal interval, so that a renewal does not race a closing connection.
                timeout_keep_alive=75,
                ssl_certfile=str(self.tls.cert) if self.tls else None,
                ssl_keyfile=str(self.tls.key) if self.tls else None,
            )
            self._uvicorn = _EmbeddedUvicorn(uv_config)
            self._uvicorn_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="pool-rest")
            while not self._uvicorn.started:
                if self._uvicorn_task.done():
                    self._uvicorn_task.result()
                    raise RuntimeError("the REST server stopped during start-up")
                await asyncio.sleep(0.01)
            if self.autoscaler is not None:  # last: the nodes it starts need the REST and gRPC ports
                await self.autoscaler.start()
        except BaseException:
            sock.close()
            await self.stop()
            raise
        log.info(
            "pool manager up: REST %s (docs at /docs), gRPC %s, store %s",
            self.rest_url,
            self.grpc_target,
            self.store.name,
        )

    def _node_pool_url(self) -> str:
        """The URL the provider's local node servers reach this pool manager at."""
        host = self.config.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.rest_port}"

    def _node_grpc_target(self) -> str:
        """The gRPC HOST:PORT the provider's local node servers reach this pool manager at."""
        host = self.config.grpc_host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{self.grpc_port}"

    async def stop(self) -> None:
        if self.autoscaler is not None:
            await self.autoscaler.stop()
            with contextlib.suppress(Exception):
                await self.autoscaler.provider.close()  # the local provider stops the node servers it started
            self.autoscaler = None
        if self._uvicorn is not None and self._uvicorn_task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await self._uvicorn_task
            self._uvicorn = None
            self._uvicorn_task = None
        if self._grpc is not None:
            await self._grpc.stop(0.5)
            self._grpc = None
        await self.service.stop()
        await self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> PoolManager:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_pool_manager(config: PoolManagerConfig, ready: Callable[[PoolManager], None] | None = None) -> None:
    """Runs a pool manager until SIGINT or SIGTERM. `ready` is called once it listens."""
    pm = PoolManager(config)
    await pm.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            ready(pm)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await pm.stop()


def run_pool_manager(config: PoolManagerConfig, ready: Callable[[PoolManager], None] | None = None) -> None:
    """Blocking entry point: runs `serve_pool_manager` on uvloop."""
    import uvloop

    uvloop.run(serve_pool_manager(config, ready))
