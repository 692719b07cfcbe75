"""The node server's link to the pool manager (gRPC): registration, heartbeats, commands, lease-token checks.

`PoolLink(agent, pool)` registers the node (its endpoint and devices from `NodeAgentAPI`), heartbeats
(capacity, free VRAM, utilization, sessions) every interval the pool asks for, and keeps the Commands stream
open: "end lease" closes the lease's sessions through `agent.end_lease(lease_id, reason)`, "drain" calls
`agent.drain()`. A heartbeat reply may also name leases that ended while a command was lost; those are ended
too. When the pool manager is away the link keeps retrying and registers again when it is back.

`pool` is the pool manager's REST URL (`http://host:7000`, as in FARGPU_POOL_URL; the link asks `/v1/info`
for the gRPC port) or a gRPC target (`grpc://host:7001` or `host:7001`).

`LeaseTokenAuth` is the node server's Authenticator for lease tokens. It sends the pool manager the token's
SHA-256, never the token, and gets back the lease id, its VRAM quota (which the node enforces at allocation)
and its expiry. Valid answers are cached for a few seconds, keyed by the digest; an "end lease" command drops
them. If the pool manager cannot be reached, a cached grant is honoured until its lease's expiry. Tokens are
never logged."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import grpc
import httpx

from fargpu import __version__
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc
from fargpu.server.agent_api import NodeAgentAPI
from fargpu.server.auth import AuthError, Grant

log = logging.getLogger("fargpu.server.pool_link")

Validator = Callable[[bytes], Awaitable[pool_pb2.ValidateTokenReply]]


@dataclass
class _Cached:
    digest: bytes
    grant: Grant
    checked_at: float


class LeaseTokenAuth:
    """Validates lease tokens with the pool manager. Bound to a PoolLink, which supplies the gRPC call."""

    def __init__(self, cache_ttl_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self._validate: Validator | None = None
        self._cache: dict[bytes, _Cached] = {}
        self._cache_ttl = cache_ttl_s
        self._clock = clock

    def bind(self, validate: Validator) -> None:
        self._validate = validate

    def grants(self) -> list[Grant]:
        """The cached grants (for metrics)."""
        return [c.grant for c in self._cache.values()]

    def forget_lease(self, lease_id: str) -> None:
        """Drops cached grants of a lease (it ended): the next connection with its token is checked again."""
        for digest in [d for d, c in self._cache.items() if c.grant.lease_id == lease_id]:
            del self._cache[digest]

    async def authenticate(self, token: str) -> Grant:
        if not token:
            raise AuthError("no lease token was presented")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and not hmac.compare_digest(cached.digest, digest):
            cached = None
        if cached is not None and cached.grant.expires_at is not None and cached.grant.expires_at <= now:
            del self._cache[digest]
            cached = None
        if cached is not None and now - cached.checked_at < self._cache_ttl:
            return cached.grant
        if self._validate is None:
            raise AuthError("this node is not connected to a pool manager yet; try again shortly")
        try:
            reply = await self._validate(digest)
        except grpc.aio.AioRpcError as e:
            if cached is not None:  # the pool is away: honour what it said until the lease's expiry
                return cached.grant
            why = f"the pool manager is unreachable ({e.code().name})"
            raise AuthError(f"cannot check the lease token: {why}") from None
        if not reply.valid:
            self._cache.pop(digest, None)
            raise AuthError(f"lease token refused: {reply.reason}")
        grant = Grant(
            lease_id=reply.lease_id,
            vram_quota_bytes=reply.vram_quota_bytes or None,
            expires_at=reply.expires_at or None,
        )
        self._cache[digest] = _Cached(digest, grant, now)
        return grant


def endpoint_url(endpoint: str) -> str:
    """The agent's endpoint as the pool publishes it: "h:p" -> "tcp://h:p", "/path" -> "unix:///path"."""
    if "://" in endpoint:
        return endpoint
    return f"unix://{endpoint}" if endpoint.startswith("/") else f"tcp://{endpoint}"


async def resolve_grpc_target(pool: str, timeout_s: float = 5.0) -> str:
    """`pool` is a REST URL (asks /v1/info), a grpc:// URL, or a host:port gRPC target."""
    if pool.startswith("grpc://"):
        return pool.removeprefix("grpc://")
    if not pool.startswith(("http://", "https://")):
        return pool
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        info = (await client.get(pool.rstrip("/") + "/v1/info")).raise_for_status().json()
    host = info.get("grpc_host") or urlparse(pool).hostname or "127.0.0.1"
    return f"{host}:{int(info['grpc_port'])}"


class PoolLink:
    def __init__(
        self,
        agent: NodeAgentAPI,
        pool: str,
        *,
        auth: LeaseTokenAuth | None = None,
        node_id: str | None = None,
        endpoints: list[str] | None = None,
        version: str = __version__,
        retry_s: float = 1.0,
        validate_timeout_s: float = 3.0,
    ) -> None:
        self.agent = agent
        self.validate_timeout_s = validate_timeout_s
        self.pool = pool
        # The node server builds its Authenticator first; adopt it when it is ours.
        agent_auth = getattr(agent, "auth", None)
        self.auth = auth or (agent_auth if isinstance(agent_auth, LeaseTokenAuth) else LeaseTokenAuth())
        self.node_id = node_id or os.environ.get("FARGPU_NODE_ID") or socket.gethostname()
        self._endpoints = endpoints
        self.version = version
        self.retry_s = retry_s
        self.heartbeat_interval_s = 2.0
        self.draining = False
        self.last_heartbeat_ok: float | None = None
        self.registered = asyncio.Event()
        self._target: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pool_pb2_grpc.NodeRegistryStub | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, wait_registered_s: float = 5.0) -> None:
        """Starts the link; waits up to `wait_registered_s` for the first registration (then goes on trying
        in the background)."""
        self.auth.bind(self._validate)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="pool-link-heartbeat"),
            asyncio.create_task(self._command_loop(), name="pool-link-commands"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registered.wait(), wait_registered_s)
        if not self.registered.is_set():
            log.warning("not registered with the pool manager at %s yet; still trying", self.pool)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def _get_stub(self) -> pool_pb2_grpc.NodeRegistryStub:
        if self._stub is None:
            self._target = await resolve_grpc_target(self.pool)
            # Reconnect quickly after a pool-manager restart (gRPC's default backoff grows to minutes).
            self._channel = grpc.aio.insecure_channel(
                self._target,
                options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)],
            )
            self._stub = pool_pb2_grpc.NodeRegistryStub(self._channel)
        return self._stub

    async def _validate(self, digest: bytes) -> pool_pb2.ValidateTokenReply:
        stub = await self._get_stub()
        return await stub.ValidateToken(
            pool_pb2.ValidateTokenRequest(node_id=self.node_id, token_sha256=digest),
            timeout=self.validate_timeout_s,
            wait_for_ready=True,  # ride out a brief reconnect instead of refusing the client at once
        )

    # --- what the node tells the pool --------------------------------------------------------------------
    def _gpus(self) -> list[pool_pb2.Gpu]:
        return [
            pool_pb2.Gpu(
                index=d.index,
                name=d.name,
                uuid=d.uuid,
                total_bytes=d.total_bytes,
                free_bytes=d.free_bytes,
                utilization_pct=d.utilization_pct,
            )
            for d in self.agent.devices()
        ]

    def _sessions(self) -> list[pool_pb2.Session]:
        return [
            pool_pb2.Session(
                session_id=s.session_id,
                lease_id=s.lease_id,
                pid=s.pid,
                vram_used_bytes=s.vram_used_bytes,
                client=s.client,
            )
            for s in self.agent.sessions()
        ]

    async def register(self) -> None:
        stub = await self._get_stub()
        endpoints = self._endpoints or [endpoint_url(self.agent.endpoint)]
        reply = await stub.Register(
            pool_pb2.RegisterRequest(
                node_id=self.node_id,
                endpoints=endpoints,
                backend=self.agent.backend,
                gpus=self._gpus(),
                version=self.version,
            ),
            timeout=5.0,
        )
        self.node_id = reply.node_id
        self.heartbeat_interval_s = reply.heartbeat_interval_s or self.heartbeat_interval_s
        self.registered.set()
        log.info("registered with the pool manager at %s as node %s", self._target, self.node_id)

    async def heartbeat(self) -> bool:
        """One heartbeat; ends the sessions of leases the pool says are over. False: register again."""
        stub = await self._get_stub()
        reply = await stub.Heartbeat(
            pool_pb2.HeartbeatRequest(
                node_id=self.node_id, gpus=self._gpus(), sessions=self._sessions(), draining=self.draining
            ),
            timeout=5.0,
        )
        if not reply.known:
            self.registered.clear()
            return False
        self.last_heartbeat_ok = time.time()
        for end in reply.end_leases:
            await self._end_lease(end.lease_id, end.reason)
        return True

    # --- loops -------------------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                if not self.registered.is_set():
                    await self.register()
                if not await self.heartbeat():
                    continue  # the pool forgot us (or marked us down): register at once
                await asyncio.sleep(self.heartbeat_interval_s)
            except (grpc.aio.AioRpcError, httpx.HTTPError, OSError, ValueError, KeyError) as e:
                log.warning("pool manager %s: %s; retrying in %.1fs", self.pool, _describe(e), self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def _command_loop(self) -> None:
        while True:
            await self.registered.wait()
            try:
                stub = await self._get_stub()
                async for cmd in stub.Commands(pool_pb2.CommandsRequest(node_id=self.node_id)):
                    await self._handle(cmd)
            except grpc.aio.AioRpcError as e:
                log.debug("command stream ended: %s", _describe(e))
            except (httpx.HTTPError, OSError, ValueError, KeyError) as e:
                log.debug("command stream failed: %s", _describe(e))
            await asyncio.sleep(self.retry_s)

    async def _handle(self, cmd: pool_pb2.Command) -> None:
        kind = cmd.WhichOneof("kind")
        if kind == "end_lease":
            await self._end_lease(cmd.end_lease.lease_id, cmd.end_lease.reason)
        elif kind == "drain":
            log.info("the pool manager asked this node to drain: %s", cmd.drain.reason)
            self.draining = True
            await self.agent.drain()

    async def _end_lease(self, lease_id: str, reason: str) -> None:
        self.auth.forget_lease(lease_id)
        closed = await self.agent.end_lease(lease_id, reason)
        if closed:
            log.info("ended %d session(s) of lease %s: %s", closed, lease_id, reason)


def _describe(e: Exception) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
