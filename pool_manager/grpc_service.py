"""The pool manager's gRPC side: node agents register, heartbeat, validate lease tokens and take commands.

Messages are defined in `protocol/pool.proto`. The Commands call is a server stream that stays open while the
node lives: it waits on the store's command queue for the node (end a lease, drain, page a session out or in), so
a command queued by any pool manager sharing the store reaches the node, whichever pool manager its stream is
attached to. Commands are at-most-once: one
lost with a broken stream is made good by the heartbeat, whose reply names every lease that the node still has
sessions for but which is no longer active there.

Identity (see `enrolment.py`): `Enrol` is the only call without a node credential; it needs the pool's
enrolment token and issues the node a credential, unless the node id is live with a credential already (then
only that credential's holder may register it, so nobody can re-point a live node's endpoints at themselves).
Every other call goes through `authenticate` first: the caller's credential must match the one stored for the
node id in its metadata (UNAUTHENTICATED otherwise), and that node id must be the one the request is about
(PERMISSION_DENIED otherwise). Refusals are logged as warnings with the peer's address, never with a secret."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fargpu.pool_manager.enrolment import credential_hash, credential_matches, parse_node_metadata
from fargpu.pool_manager.errors import PoolError
from fargpu.pool_manager.models import GpuInfo, SessionInfo
from fargpu.pool_manager.node_enrol import EnrolRefused, admit
from fargpu.pool_manager.service import PoolService
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc

log = logging.getLogger("fargpu.pool_manager.grpc")

T = TypeVar("T")
_ENROL_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
                "exists": grpc.StatusCode.ALREADY_EXISTS}
Bridge = Callable[[Awaitable[Any]], Awaitable[Any]]


async def _same_loop(aw: Awaitable[T]) -> T:
    return await aw


def gpu_from_proto(g: pool_pb2.Gpu) -> GpuInfo:
    return GpuInfo(
        index=g.index,
        name=g.name,
        uuid=g.uuid,
        total_bytes=g.total_bytes,
        free_bytes=g.free_bytes,
        utilization_pct=g.utilization_pct,
    )


def session_from_proto(node_id: str, s: pool_pb2.Session) -> SessionInfo:
    return SessionInfo(
        session_id=s.session_id,
        lease_id=s.lease_id,
        node_id=node_id,
        pid=s.pid,
        vram_used_bytes=s.vram_used_bytes,
        client=s.client,
        state=s.state or "resident",
        resident_bytes=s.resident_bytes,
        paged_bytes=s.paged_bytes,
        unpageable_bytes=s.unpageable_bytes,
        park_blocker=s.park_blocker,
        idle_s=s.idle_s,
        page_command_id=s.page_command_id or None,
        page_result=s.page_result or None,
    )


class NodeRegistryService(pool_pb2_grpc.NodeRegistryServicer):
    def __init__(
        self, service: PoolService, command_wait_s: float = 1.0, bridge: Bridge | None = None, *, enrol_token: str,
        mtls: bool = False,
    ) -> None:
        """`bridge` runs a service call where the service lives, when gRPC runs on another event loop.
        `enrol_token` is the secret a node must present to `Enrol`. `mtls`: the server requires client
        certificates, and a caller's certificate must name the node it claims to be."""
        if not enrol_token:
            raise ValueError("the enrolment token must not be empty")
        self._service = service
        self._wait = command_wait_s
        self._run: Bridge = bridge or _same_loop
        self._enrol_token = enrol_token
        self._mtls = mtls

    # --- identity ----------------------------------------------------------------------------------------
    async def authenticate(self, context: Any, node_id: str, call: str) -> str:
        """The one identity check of every node call except Enrol: returns the caller's node id, or aborts the
        call. `node_id` is the id the request is about (empty: the caller's own).

        The identity is the node id in the metadata, proven by the credential the pool issued it at enrolment;
        with mTLS also by the peer certificate (verified against the pool's CA by the TLS handshake, which
        refuses unknown and expired ones), whose common name must be that node id."""
        claimed, credential = parse_node_metadata(context.invocation_metadata())
        peer = context.peer()
        if not claimed or not credential:
            log.warning("refused %s for node %r from %s: no node credential", call, node_id, peer)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this call needs a node credential (metadata x-fargpu-node and authorization: Bearer ...): "
                "enrol the node first",
            )
        stored = await self._run(self._service.store.node_credential(claimed))
        # Hash a presented credential even for an unknown node, so timing does not tell which ids exist.
        matches = credential_matches(credential, stored if stored is not None else credential_hash(""))
        if stored is None or not matches:
            log.warning("refused %s from %s: invalid credential for node %r", call, peer, claimed)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"invalid credential for node {claimed!r}: enrol the node again"
            )
        if self._mtls:
            names = context.auth_context().get("x509_common_name") or [b""]
            cn = names[0].decode(errors="replace") if isinstance(names[0], bytes) else str(names[0])
            if cn != claimed[:64]:
                log.warning("refused %s from %s: its certificate names node %r, not %r", call, peer, cn, claimed)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    f"the client certificate is not node {claimed!r}'s: enrol the node again")
        if node_id and node_id != claimed:
            log.warning("refused %s from %s: node %r tried to act for node %r", call, peer, claimed, node_id)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node {claimed!r} may not act for node {node_id!r}")
        return claimed

    async def Enrol(self, request: pool_pb2.EnrolRequest, context: Any) -> pool_pb2.EnrolReply:
        try:
            node_id, credential = await admit(self._service, self._enrol_token, request.node_id,
                                              request.enrol_token, context.peer(), self._run)  # fmt: skip
        except EnrolRefused as e:
            await context.abort(_ENROL_CODES[e.kind], e.message)
            raise  # abort raises; this keeps type checkers informed
        return pool_pb2.EnrolReply(node_id=node_id, credential=credential)

    # --- node calls --------------------------------------------------------------------------------------
    async def Register(self, request: pool_pb2.RegisterRequest, context: Any) -> pool_pb2.RegisterReply:
        node_id = await self.authenticate(context, request.node_id, "Register")
        try:
            node = await self._run(
                self._service.register_node(
                    node_id,
                    list(request.endpoints),
                    request.backend or "cuda",
                    request.version,
                    [gpu_from_proto(g) for g in request.gpus],
                    overcommit=request.overcommit,
                    capabilities=[c for c in request.capabilities if c.isprintable() and len(c) <= 64][:32],
                )
            )
        except PoolError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.reason)
            raise  # abort raises; this keeps type checkers informed
        cfg = self._service.config
        return pool_pb2.RegisterReply(
            node_id=node.node_id,
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            heartbeat_timeout_s=cfg.heartbeat_timeout_s,
        )

    async def Heartbeat(self, request: pool_pb2.HeartbeatRequest, context: Any) -> pool_pb2.HeartbeatReply:
        node_id = await self.authenticate(context, request.node_id, "Heartbeat")
        known, stale = await self._run(
            self._service.node_heartbeat(
                node_id,
                [gpu_from_proto(g) for g in request.gpus],
                [session_from_proto(node_id, s) for s in request.sessions],
                request.draining,
            )
        )
        return pool_pb2.HeartbeatReply(
            known=known, end_leases=[pool_pb2.EndLease(lease_id=lid, reason=why) for lid, why in stale]
        )

    async def Commands(self, request: pool_pb2.CommandsRequest, context: Any) -> Any:
        node_id = await self.authenticate(context, request.node_id, "Commands")
        if await self._run(self._service.store.get_node(node_id)) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {node_id!r} is not registered")
        while True:
            for c in await self._run(self._service.next_commands(node_id, self._wait)):
                if c.kind == "end_lease":
                    yield pool_pb2.Command(
                        command_id=c.command_id, end_lease=pool_pb2.EndLease(lease_id=c.lease_id, reason=c.reason)
                    )
                elif c.kind == "drain":
                    yield pool_pb2.Command(command_id=c.command_id, drain=pool_pb2.Drain(reason=c.reason))
                elif c.kind == "undrain":
                    yield pool_pb2.Command(command_id=c.command_id, undrain=pool_pb2.Undrain())
                elif c.kind == "page_out":
                    yield pool_pb2.Command(
                        command_id=c.command_id, page_out=pool_pb2.PageOut(session_id=c.session_id, to=c.to)
                    )
                elif c.kind == "page_in":
                    yield pool_pb2.Command(command_id=c.command_id, page_in=pool_pb2.PageIn(session_id=c.session_id))
                elif c.kind == "park":
                    yield pool_pb2.Command(command_id=c.command_id, park=pool_pb2.Park(session_id=c.session_id))

    async def ValidateToken(self, request: pool_pb2.ValidateTokenRequest, context: Any) -> pool_pb2.ValidateTokenReply:
        node_id = await self.authenticate(context, request.node_id, "ValidateToken")
        if len(request.token_sha256) != 32:
            return pool_pb2.ValidateTokenReply(valid=False, reason="malformed token hash")
        lease, why = await self._run(self._service.validate_token(node_id, request.token_sha256.hex()))
        if lease is None:
            return pool_pb2.ValidateTokenReply(valid=False, reason=why)
        return pool_pb2.ValidateTokenReply(
            valid=True,
            lease_id=lease.lease_id,
            vram_quota_bytes=lease.quota_bytes,
            expires_at=lease.expires_at,
            max_sessions=self._service.config.max_sessions_per_lease,
            qos=lease.qos.value,
            idle_timeout_s=self._service.idle_timeout_of(lease),
            gpus=[a.gpu for a in lease.allocs],
            vram_per_gpu_bytes=lease.vram_bytes,
        )
