"""The pool manager's gRPC side: node agents register, heartbeat, validate lease tokens and take commands.

Messages are defined in `protocol/pool.proto`. The Commands call is a server stream that stays open while the
node lives: it waits on the store's command queue for the node, so a command queued by any pool manager sharing
the store reaches the node, whichever pool manager its stream is attached to. Commands are at-most-once: one
lost with a broken stream is made good by the heartbeat, whose reply names every lease that the node still has
sessions for but which is no longer active there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fargpu.pool_manager.errors import PoolError
from fargpu.pool_manager.models import GpuInfo, SessionInfo
from fargpu.pool_manager.service import PoolService
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc

T = TypeVar("T")
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
    )


class NodeRegistryService(pool_pb2_grpc.NodeRegistryServicer):
    def __init__(self, service: PoolService, command_wait_s: float = 1.0, bridge: Bridge | None = None) -> None:
        """`bridge` runs a service call where the service lives, when gRPC runs on another event loop."""
        self._service = service
        self._wait = command_wait_s
        self._run: Bridge = bridge or _same_loop

    async def Register(self, request: pool_pb2.RegisterRequest, context: Any) -> pool_pb2.RegisterReply:
        try:
            node = await self._run(
                self._service.register_node(
                    request.node_id,
                    list(request.endpoints),
                    request.backend or "cuda",
                    request.version,
                    [gpu_from_proto(g) for g in request.gpus],
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
        known, stale = await self._run(
            self._service.node_heartbeat(
                request.node_id,
                [gpu_from_proto(g) for g in request.gpus],
                [session_from_proto(request.node_id, s) for s in request.sessions],
                request.draining,
            )
        )
        return pool_pb2.HeartbeatReply(
            known=known, end_leases=[pool_pb2.EndLease(lease_id=lid, reason=why) for lid, why in stale]
        )

    async def Commands(self, request: pool_pb2.CommandsRequest, context: Any) -> Any:
        if await self._run(self._service.store.get_node(request.node_id)) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.node_id!r} is not registered")
        while True:
            for c in await self._run(self._service.next_commands(request.node_id, self._wait)):
                if c.kind == "end_lease":
                    yield pool_pb2.Command(
                        command_id=c.command_id, end_lease=pool_pb2.EndLease(lease_id=c.lease_id, reason=c.reason)
                    )
                elif c.kind == "drain":
                    yield pool_pb2.Command(command_id=c.command_id, drain=pool_pb2.Drain(reason=c.reason))

    async def ValidateToken(self, request: pool_pb2.ValidateTokenRequest, context: Any) -> pool_pb2.ValidateTokenReply:
        if len(request.token_sha256) != 32:
            return pool_pb2.ValidateTokenReply(valid=False, reason="malformed token hash")
        lease, why = await self._run(self._service.validate_token(request.node_id, request.token_sha256.hex()))
        if lease is None:
            return pool_pb2.ValidateTokenReply(valid=False, reason=why)
        return pool_pb2.ValidateTokenReply(
            valid=True, lease_id=lease.lease_id, vram_quota_bytes=lease.quota_bytes, expires_at=lease.expires_at
        )
