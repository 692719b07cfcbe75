"""The node server's link to the pool manager (gRPC): registration, heartbeats, commands, lease-token checks.

`PoolLink(agent, pool)` registers the node (its endpoint and devices from `NodeAgentAPI`), heartbeats
(capacity, free VRAM, utilization, sessions with their paging state) every interval the pool asks for, and keeps
the Commands stream open: "end lease" closes the lease's sessions through `agent.end_lease(lease_id, reason)`,
"drain" calls `agent.drain()`, "page out" / "page in" call `agent.page_out(session_id, to)` / `agent.page_in(...)`
in the background (a step can take seconds; the stream keeps flowing) and report the outcome with the session in
the next heartbeat, which is sent at once (`page_command_id`, `page_result`), as it is when a session starts or
ends (so a lease that ends with its last session ends at once, see the pool's service.py). A heartbeat reply may
also name leases that ended while a command was lost; those are ended too. When the pool manager is away the link keeps
retrying and registers again when it is back. The node's own overcommit ratio (`overcommit`, 0: the pool's)
goes with every registration.

Identity: before anything else the link enrols the node (`Enrol` with the pool's enrolment token) and gets a
credential of its own, which every other call carries as metadata (see `fargpu.pool_manager.enrolment`). The
enrolment token is `enrol_token`, else FARGPU_ENROL_TOKEN, else the state directory's `enrol-token` file that a
pool manager on this machine writes (zero configuration on one machine). The credential is kept in memory and in
`<state dir>/node-credentials/<node id>` (0600), so a restarted node registers again with its own credential
while its old record is still live (the pool refuses to enrol a live, enrolled node id again). When the pool no
longer knows the credential (UNAUTHENTICATED: say a memory-only pool manager restarted) the link enrols again.

`pool` is the pool manager's REST URL (`http://host:7000`, as in FARGPU_POOL_URL; the link asks `/v1/info`
for the gRPC port, unless `grpc_target` names it: `fargpu server --pool-grpc`, which the local provider sets for
the nodes it starts) or a gRPC target (`grpc://host:7001` or `host:7001`). httpx is imported only where the link
speaks HTTP (that lookup, a TLS pool's enrolment): a node told its gRPC target by a plain-HTTP pool starts without
it.

`LeaseTokenAuth` is the node server's Authenticator for lease tokens. It sends the pool manager the token's
SHA-256, never the token, and gets back the lease id, its VRAM quota (which the node enforces at allocation),
its expiry and its paging policy (QoS; idle timeout, left None in the Grant when the pool does not say). Valid
answers are cached for a few seconds, keyed by the digest; an "end lease" command drops them. If the pool manager
cannot be reached, a cached grant is honoured until its lease's expiry. Tokens, enrolment tokens and credentials
are never logged."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc

from fargpu import __version__, timeline
from fargpu.pool_manager.enrolment import ENROL_TOKEN_ENV, node_metadata, read_enrol_token
from fargpu.pool_manager.state_paths import enrol_token_file, node_credentials_dir
from fargpu.pool_manager.tls import TlsConfigError, machine_names, verify_for
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc
from fargpu.server import pool_tls
from fargpu.server.agent_api import NodeAgentAPI
from fargpu.server.auth import AuthError, Grant

log = logging.getLogger("fargpu.server.pool_link")

Validator = Callable[[bytes], Awaitable[pool_pb2.ValidateTokenReply]]
Metadata = tuple[tuple[str, str], ...]

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class EnrolmentUnavailable(Exception):
    """No enrolment token could be found; the message says what to set (and never contains a secret)."""


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
            if e.code() in _REFUSED:
                why = f"the pool manager does not accept this node's credential ({e.code().name}); it enrols again"
            else:
                why = f"the pool manager is unreachable ({e.code().name})"
            raise AuthError(f"cannot check the lease token: {why}") from None
        if not reply.valid:
            self._cache.pop(digest, None)
            raise AuthError(f"lease token refused: {reply.reason}")
        grant = Grant(
            lease_id=reply.lease_id,
            vram_quota_bytes=reply.vram_quota_bytes or None,
            expires_at=reply.expires_at or None,
            max_sessions=reply.max_sessions or None,
            qos=reply.qos or None,
            idle_timeout_s=reply.idle_timeout_s if reply.HasField("idle_timeout_s") else None,
            gpus=tuple(int(g) for g in reply.gpus),
            vram_per_gpu_bytes=reply.vram_per_gpu_bytes or None,
        )
        self._cache[digest] = _Cached(digest, grant, now)
        return grant


def endpoint_url(endpoint: str, tls: bool = False) -> str:
    """The agent's endpoint as the pool publishes it: "h:p" -> "tcp://h:p" ("tls://h:p" when the node speaks
    TLS there), "/path" -> "unix:///path"."""
    if "://" in endpoint:
        return endpoint
    return f"unix://{endpoint}" if endpoint.startswith("/") else f"{'tls' if tls else 'tcp'}://{endpoint}"


def _http_errors() -> tuple[type[Exception], ...]:
    """httpx's error class once something imported httpx, else none (no httpx call has been made to raise one)."""
    httpx = sys.modules.get("httpx")
    return (httpx.HTTPError,) if httpx is not None else ()


async def resolve_grpc_target(pool: str, timeout_s: float = 5.0) -> str:
    """`pool` is a REST URL (asks /v1/info), a grpc:// URL, or a host:port gRPC target."""
    if pool.startswith("grpc://"):
        return pool.removeprefix("grpc://")
    if not pool.startswith(("http://", "https://")):
        return pool
    import httpx
    async with httpx.AsyncClient(timeout=timeout_s, verify=verify_for(pool)) as client:
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
        enrol_token: str | None = None,
        persist_credential: bool = True,
        overcommit: float = 0.0,
        grpc_target: str | None = None,
    ) -> None:
        """`enrol_token`: the pool's enrolment token (None or empty: FARGPU_ENROL_TOKEN, else the state
        directory's file, looked up at each enrolment). `persist_credential=False` keeps the node's credential
        in memory only (simulated nodes of a benchmark). `overcommit`: this node's own ratio (>= 1) for the
        pool's placement to book its GPUs at; 0: the pool's. `grpc_target`: the pool's gRPC HOST:PORT, when known
        (no /v1/info lookup then)."""
        if overcommit != 0 and not overcommit >= 1:
            raise ValueError(f"a node's overcommit ratio must be at least 1, or 0 for the pool's (got {overcommit:g})")
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
        self._grpc_hint = grpc_target or None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pool_pb2_grpc.NodeRegistryStub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._enrol_token = enrol_token or None
        self._persist = persist_credential
        self._credential: str | None = None
        self._credential_file_tried = False
        self._last_problem: str | None = None
        self.overcommit = overcommit
        self._page_results: dict[str, tuple[str, str]] = {}  # session id -> (command id, outcome) of the last step
        self._page_tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_now = asyncio.Event()
        self.tls = pool.startswith("https://")  # a TLS pool: enrol over HTTPS, then mTLS on gRPC (pool_tls.py)
        self.cert: pool_tls.NodeCert | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, wait_registered_s: float = 5.0) -> None:
        """Starts the link; waits up to `wait_registered_s` for the first registration (then goes on trying
        in the background)."""
        self.auth.bind(self._validate)
        agent: Any = self.agent
        if hasattr(agent, "on_sessions_changed"):  # a session began or ended: the pool hears of it at once
            agent.on_sessions_changed = self._heartbeat_now.set
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="pool-link-heartbeat"),
            asyncio.create_task(self._command_loop(), name="pool-link-commands"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registered.wait(), wait_registered_s)
        if not self.registered.is_set():
            log.warning("not registered with the pool manager at %s yet; still trying", self.pool)

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._page_tasks]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self._page_tasks.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def _get_stub(self) -> pool_pb2_grpc.NodeRegistryStub:
        if self._stub is None:
            self._target = self._grpc_hint or await resolve_grpc_target(self.pool)
            timeline.mark("node.pool_target", self.node_id)
            # Reconnect quickly after a pool-manager restart (gRPC's default backoff grows to minutes).
            options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
            if self.tls:
                if self._metadata() is None or self.cert is None:
                    await self.enrol()
                if self.cert is None:
                    raise EnrolmentUnavailable(
                        "the pool issued this node no certificate (it has no CA key): set FARGPU_TLS_CERT and "
                        "FARGPU_TLS_KEY to a certificate for this node id from the pool's CA"
                    )
                self._channel = grpc.aio.secure_channel(self._target, self.cert.channel_credentials(), options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=options)
            self._stub = pool_pb2_grpc.NodeRegistryStub(self._channel)
        return self._stub

    async def _validate(self, digest: bytes) -> pool_pb2.ValidateTokenReply:
        metadata = self._metadata()
        if metadata is None:
            raise AuthError("this node has not enrolled with the pool manager yet; try again shortly")
        stub = await self._get_stub()
        return await stub.ValidateToken(
            pool_pb2.ValidateTokenRequest(node_id=self.node_id, token_sha256=digest),
            timeout=self.validate_timeout_s,
            metadata=metadata,
            wait_for_ready=True,  # ride out a brief reconnect instead of refusing the client at once
        )

    # --- identity ----------------------------------------------------------------------------------------
    def credential_file(self) -> Path:
        """Where this node keeps its credential: `<state dir>/node-credentials/<node id>`."""
        return node_credentials_dir() / _file_name(self.node_id)

    def _find_enrol_token(self) -> str:
        token = self._enrol_token or os.environ.get(ENROL_TOKEN_ENV) or read_enrol_token(enrol_token_file())
        if not token:
            raise EnrolmentUnavailable(
                f"no enrolment token to join the pool with: set {ENROL_TOKEN_ENV} (or --enrol-token) to the pool's "
                f"token, or put it in {enrol_token_file()} (a pool manager on this machine writes that file)"
            )
        return token

    async def enrol(self) -> None:
        """Enrols this node with the pool manager and keeps the credential it issues."""
        token = self._find_enrol_token()
        if self.tls:  # the gRPC port wants a client certificate: enrol over HTTPS, and get one
            node_id, credential, cert = await pool_tls.enrol_https(self.pool, self.node_id, token,
                                                                   self._cert_names())  # fmt: skip
            self.node_id, self._credential = node_id or self.node_id, credential
            self.cert = pool_tls.own_cert() or cert
            if cert is not None and self._persist:
                pool_tls.save(self.credential_file(), cert)
            self._use_cert()
            if self._channel is not None:  # the next call connects with the new certificate
                await self._channel.close()
                self._channel, self._stub = None, None
        else:
            stub = await self._get_stub()
            reply = await stub.Enrol(pool_pb2.EnrolRequest(node_id=self.node_id, enrol_token=token), timeout=5.0)
            self.node_id = reply.node_id or self.node_id
            self._credential = reply.credential
        self._credential_file_tried = True
        self._save_credential()
        timeline.mark("node.enrolled", self.node_id)
        log.info("enrolled with the pool manager at %s as node %s", self._target, self.node_id)

    async def _renew_cert(self) -> None:
        """A new certificate before this one expires; the next call connects with it."""
        if self._credential is None:
            return
        try:
            cert = await pool_tls.renew_https(self.pool, self.node_id, self._credential, self._cert_names())
        except _http_errors() + (pool_tls.EnrolRefusedError, OSError, ValueError) as e:
            log.warning("could not renew this node's certificate (%s); trying again at the next heartbeat", e)
            return
        self.cert = cert
        if self._persist:
            pool_tls.save(self.credential_file(), cert)
        self._use_cert()
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None
        log.info("renewed this node's certificate with the pool manager")

    def _cert_names(self) -> list[str]:
        host = self.agent.endpoint.rpartition(":")[0] if ":" in self.agent.endpoint else ""
        return machine_names([host])

    def _use_cert(self) -> None:
        """The node's certificate also serves its data socket (server/tls.py), when the agent takes one."""
        setter = getattr(self.agent, "use_pool_cert", None)
        if setter is not None and self.cert is not None:
            setter(self.cert)

    def _metadata(self) -> Metadata | None:
        """The identity metadata of a call, or None before the node has a credential."""
        if self._credential is None and not self._credential_file_tried:
            self._credential_file_tried = True
            self._credential = self._load_credential()
            if self.tls and self._credential is not None:  # a TLS pool: the credential goes with a certificate
                self.cert = pool_tls.own_cert() or (pool_tls.load(self.credential_file()) if self._persist else None)
                if self.cert is None:
                    self._credential = None
                else:
                    self._use_cert()
        return node_metadata(self.node_id, self._credential) if self._credential is not None else None

    async def _metadata_or_enrol(self) -> Metadata:
        metadata = self._metadata()
        if metadata is None:
            await self.enrol()
            metadata = self._metadata()
            assert metadata is not None
        return metadata

    def _credential_refused(self, used: Metadata, e: grpc.aio.AioRpcError) -> None:
        """The pool refused the credential in `used`: forget it (unless it was replaced meanwhile) and register
        again, enrolling first."""
        if self._credential is not None and used == node_metadata(self.node_id, self._credential):
            # A pool manager without persistent state forgets credentials when it restarts: routine, not alarming.
            log.info("the pool manager refused this node's credential (%s); enrolling again", _describe(e))
            self._credential = None
        self.registered.clear()

    def _load_credential(self) -> str | None:
        if not self._persist:
            return None
        try:
            return self.credential_file().read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read this node's credential file %s: %s", self.credential_file(), e)
            return None

    def _save_credential(self) -> None:
        if not self._persist or self._credential is None:
            return
        path = self.credential_file()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._credential + "\n")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning(
                "cannot keep this node's credential in %s (%s); after a restart the node can enrol again only "
                "once the pool has marked it down",
                path,
                e,
            )

    # --- what the node tells the pool --------------------------------------------------------------------
    async def _gpus(self) -> list[pool_pb2.Gpu]:  # NVML is read off the event loop (agent.read_devices)
        return [
            pool_pb2.Gpu(
                index=d.index,
                name=d.name,
                uuid=d.uuid,
                total_bytes=d.total_bytes,
                free_bytes=d.free_bytes,
                utilization_pct=d.utilization_pct,
            )
            for d in await self.agent.read_devices()
        ]

    def _sessions(self) -> list[pool_pb2.Session]:
        sessions = self.agent.sessions()
        live = {s.session_id for s in sessions}
        for gone in [sid for sid in self._page_results if sid not in live]:
            del self._page_results[gone]
        out = []
        for s in sessions:
            command_id, result = self._page_results.get(s.session_id, ("", ""))
            out.append(
                pool_pb2.Session(
                    session_id=s.session_id,
                    lease_id=s.lease_id,
                    pid=s.pid,
                    vram_used_bytes=s.vram_used_bytes,
                    client=s.client,
                    state=s.state,
                    resident_bytes=s.resident_bytes,
                    paged_bytes=s.paged_bytes,
                    idle_s=s.idle_s,
                    unpageable_bytes=getattr(s, "unpageable_bytes", 0),
                    park_blocker=getattr(s, "park_blocker", ""),
                    page_command_id=command_id,
                    page_result=result,
                )
            )
        return out

    async def register(self) -> None:
        """Registers the node, enrolling first if it has no credential or the pool no longer accepts it."""
        endpoints = self._endpoints or [endpoint_url(self.agent.endpoint, getattr(self.agent, "tls_on", False))]
        for attempt in range(2):
            metadata = await self._metadata_or_enrol()
            stub = await self._get_stub()
            try:
                reply = await stub.Register(
                    pool_pb2.RegisterRequest(
                        node_id=self.node_id,
                        endpoints=endpoints,
                        backend=self.agent.backend,
                        gpus=await self._gpus(),
                        version=self.version,
                        overcommit=self.overcommit,
                        # "park": this node carries out Park commands (it has a park store)
                        capabilities=["park"] if getattr(getattr(self.agent, "parker", None), "store", None) else [],
                    ),
                    timeout=5.0,
                    metadata=metadata,
                )
                break
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAUTHENTICATED or attempt == 1:
                    raise
                self._credential_refused(metadata, e)
        self.node_id = reply.node_id
        self.heartbeat_interval_s = reply.heartbeat_interval_s or self.heartbeat_interval_s
        self.registered.set()
        timeline.mark("node.registered", self.node_id)
        log.info("registered with the pool manager at %s as node %s", self._target, self.node_id)

    async def heartbeat(self) -> bool:
        """One heartbeat; ends the sessions of leases the pool says are over. False: register again."""
        metadata = await self._metadata_or_enrol()
        stub = await self._get_stub()
        try:
            reply = await stub.Heartbeat(
                pool_pb2.HeartbeatRequest(
                    node_id=self.node_id, gpus=await self._gpus(), sessions=self._sessions(), draining=self.draining
                ),
                timeout=5.0,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            self._credential_refused(metadata, e)
            return False
        if not reply.known:
            self.registered.clear()
            return False
        self.last_heartbeat_ok = time.time()
        self._last_problem = None
        if self.tls and self.cert is not None and self.cert.renew_due():
            await self._renew_cert()
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
                # A finished page step sends its outcome at once. (asyncio.timeout, not wait_for: on 3.11 wait_for
                # swallows a cancellation that lands as the event is set, and stop() would wait forever.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.heartbeat_interval_s):
                        await self._heartbeat_now.wait()
                self._heartbeat_now.clear()
            except _http_errors() + (grpc.aio.AioRpcError, EnrolmentUnavailable, OSError, ValueError, KeyError,
                                     pool_tls.EnrolRefusedError, TlsConfigError) as e:
                self._report(_describe(e))
                if self.tls and isinstance(e, grpc.aio.AioRpcError) and "certificate" in (e.details() or ""):
                    self._credential, self.cert = None, None  # refused (expired, say): enrol again for a new one
                    self.registered.clear()
                    if self._channel is not None:
                        await self._channel.close()
                        self._channel, self._stub = None, None
                await asyncio.sleep(self.retry_s)

    def _report(self, problem: str) -> None:
        """Logs a problem of the link once (until it changes or a heartbeat succeeds), not at every retry."""
        if problem != self._last_problem:
            self._last_problem = problem
            log.warning("pool manager %s: %s; retrying every %gs", self.pool, problem, self.retry_s)
        else:
            log.debug("pool manager %s: %s; retrying in %.1fs", self.pool, problem, self.retry_s)

    async def _command_loop(self) -> None:
        while True:
            await self.registered.wait()
            metadata = self._metadata()
            try:
                if metadata is None:
                    raise ValueError("no node credential yet")
                stub = await self._get_stub()
                request = pool_pb2.CommandsRequest(node_id=self.node_id)
                async for cmd in stub.Commands(request, metadata=metadata):
                    await self._handle(cmd)
            except grpc.aio.AioRpcError as e:
                log.debug("command stream ended: %s", _describe(e))
                if e.code() == grpc.StatusCode.UNAUTHENTICATED and metadata is not None:
                    self._credential_refused(metadata, e)
            except _http_errors() + (OSError, ValueError, KeyError) as e:
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
        elif kind == "undrain":
            log.info("the pool manager asked this node to accept new sessions again")
            self.draining = False
            await self.agent.undrain()
        elif kind in ("page_out", "page_in", "park"):
            task = asyncio.create_task(self._page(cmd), name=f"pool-link-{kind}")
            self._page_tasks.add(task)
            task.add_done_callback(self._page_tasks.discard)

    async def _page(self, cmd: pool_pb2.Command) -> None:
        """Runs one page-out or page-in the pool asked for; its outcome goes to the pool with the session."""
        if cmd.WhichOneof("kind") == "park":
            await self._park(cmd)
            return
        out = cmd.WhichOneof("kind") == "page_out"
        session_id = cmd.page_out.session_id if out else cmd.page_in.session_id
        to = (cmd.page_out.to or "auto") if out else ""
        log.info("the pool manager asked to page %s session %s%s", "out" if out else "in", session_id,
                 f" (to {to})" if out else "")  # fmt: skip
        try:
            if out and to not in ("auto", "host", "disk"):
                result = f"failed unknown page-out target {to!r} (auto, host or disk)"
            elif out:
                result = await self.agent.page_out(session_id, to)
            else:
                result = await self.agent.page_in(session_id)
        except Exception as e:  # the agent's contract is a "failed ..." string; report anything else the same way
            log.exception("page-%s of session %s failed", "out" if out else "in", session_id)
            result = f"failed {str(e) or type(e).__name__}"
        self._page_results[session_id] = (cmd.command_id, result)
        self._heartbeat_now.set()

    async def _park(self, cmd: pool_pb2.Command) -> None:
        """Parks a session off this node (server/park/node.py); the outcome goes to the pool with the session."""
        session_id = cmd.park.session_id
        log.info("the pool manager asked to park session %s", session_id)
        try:
            result = await self.agent.park(session_id)
        except Exception as e:  # reported like a page-out's failure
            log.exception("parking session %s failed", session_id)
            result = f"failed {str(e) or type(e).__name__}"
        self._page_results[session_id] = (cmd.command_id, result)
        self._heartbeat_now.set()

    async def _end_lease(self, lease_id: str, reason: str) -> None:
        self.auth.forget_lease(lease_id)
        closed = await self.agent.end_lease(lease_id, reason)
        if closed:
            log.info("ended %d session(s) of lease %s: %s", closed, lease_id, reason)


_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _file_name(node_id: str) -> str:
    """A node id as a file name: itself when that is safe, else a digest of it."""
    if _SAFE_FILE_NAME.fullmatch(node_id):
        return node_id
    return "sha256-" + hashlib.sha256(node_id.encode()).hexdigest()


def _describe(e: Exception) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
