"""The pool service's leases: checking a request, placing it, the wait queue, renewing and ending leases.

Queueing: a request that asked to wait (`wait_s > 0`) and found no room joins this process's wait queue. The
queue is retried in QoS order, then arrival order, whenever capacity may have appeared here (a lease ended, a
node registered) and every `queue_poll_s` (to see capacity freed through other pool managers). A later, smaller
request may take room that an earlier, bigger one cannot use yet (backfill). When the wait runs out the caller
gets 503 with Retry-After. A lease placed for a waiter that gave up in the meantime is released at once.

The wait queue and the leases waiting to move (service_parking.py) are this pool manager's demand, which it
publishes in the store for the pool manager that scales (`publish_demand`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
import time

from fargpu import timeline
from fargpu.pool_manager.errors import BadRequest, Conflict, NoCapacity, NotFound, QuotaExceeded
from fargpu.pool_manager.models import GpuAlloc, LeaseRecord, LeaseState, QoS
from fargpu.pool_manager.placement import place, why_not
from fargpu.pool_manager.service_core import LeaseRequest, _Waiter
from fargpu.pool_manager.service_tenants import TenantService
from fargpu.pool_manager.store import QUOTA_REFUSAL, Command, EndResult, NodeCapacity, TenantLimits
from fargpu.pool_manager.tenants import Principal
from fargpu.pool_manager.tokens import new_lease_id, new_token, token_hash
from fargpu.pool_manager.units import format_size

log = logging.getLogger("fargpu.pool_manager")


class LeaseService(TenantService):
    """Placing, queueing, renewing and ending leases; the demand this process publishes."""

    def _check(self, req: LeaseRequest) -> LeaseRequest:
        c = self.config
        if req.vram_bytes <= 0:
            raise BadRequest("vram_bytes must be positive")
        if req.gpu_count <= 0:
            raise BadRequest("gpus must be at least 1")
        ttl = c.default_ttl_s if req.ttl_s is None else req.ttl_s
        if not 0 < ttl <= c.max_ttl_s:
            raise BadRequest(f"ttl_s must be in (0, {c.max_ttl_s:g}]")
        if not 0 <= req.wait_s <= c.max_wait_s:
            raise BadRequest(f"wait_s must be in [0, {c.max_wait_s:g}]")
        idle = c.default_idle_timeout_s if req.idle_timeout_s is None else req.idle_timeout_s
        if not (0 <= idle < math.inf):
            raise BadRequest("idle_timeout_s must be 0 (never idle-paged) or a positive number of seconds")
        return LeaseRequest(
            req.vram_bytes, req.gpu_count, req.qos, ttl, req.wait_s, req.label, req.strategy, float(idle),
            req.end_with_sessions, tuple(req.avoid_nodes),
        )

    async def _try_place(
        self,
        req: LeaseRequest,
        thash: str,
        view: list[NodeCapacity] | None = None,
        tenant: str = "",
        limits: TenantLimits | None = None,
    ) -> tuple[LeaseRecord | str, list[NodeCapacity]]:
        """One placement: a snapshot (`view`, or a fresh one), a choice, an atomic booking; retried with fresh
        snapshots while the store refuses a choice made stale by another pool manager. Returns the lease (or
        why there is no room) and the latest snapshot, with this booking applied, for the caller to reuse."""
        async with self._place_lock:  # one placement at a time here: no collisions among this process's own
            return await self._try_place_locked(req, thash, view, tenant, limits)

    def _placeable(self, view: list[NodeCapacity], req: LeaseRequest) -> tuple[list[NodeCapacity], list[NodeCapacity]]:
        """The nodes a placement may use, first choices first: (heard from within `stale_after_s`, the other
        ones). Nodes the client avoids are in neither."""
        stale = self.config.stale_after_s
        now = self.clock()
        usable = [n for n in view if n.node_id not in req.avoid_nodes]
        fresh = [n for n in usable if stale is None or n.last_heartbeat <= 0 or now - n.last_heartbeat <= stale]
        return fresh, [n for n in usable if n not in fresh]

    async def _try_place_locked(
        self, req: LeaseRequest, thash: str, view: list[NodeCapacity] | None, tenant: str, limits: TenantLimits | None
    ) -> tuple[LeaseRecord | str, list[NodeCapacity]]:
        started = time.perf_counter()
        strategy = req.strategy or self.config.strategy
        assert req.ttl_s is not None
        for attempt in range(self.config.place_attempts):
            if view is None:
                view = await self.store.placement_view()
            ratio = self.config.overcommit_ratio
            among = 1 if attempt == 0 else 4
            fresh, late = self._placeable(view, req)
            p = place(fresh, req.vram_bytes, req.gpu_count, strategy, self._rng, among, qos=req.qos, overcommit=ratio)
            if p is None and late:  # only a node that is late with its heartbeat (busy, or gone) has room
                p = place(late, req.vram_bytes, req.gpu_count, strategy, self._rng, among, qos=req.qos,
                          overcommit=ratio)  # fmt: skip
            if p is None:
                usable = fresh + late
                why = why_not(usable, req.vram_bytes, req.gpu_count, qos=req.qos, overcommit=ratio)
                if len(usable) < len(view):
                    why += f" ({len(view) - len(usable)} node(s) left out: the client could not reach them)"
                if not view and self.can_scale_up is None:  # no node ever, and no provider to start one
                    why += ("; no node server has registered and this pool manager starts none (--provider none): "
                            "run `fargpu server --pool URL` on a GPU machine, or start the pool manager with "
                            "--provider local (node servers on this machine) or --provider kubernetes")
                return why, view
            now = self.clock()
            lease = LeaseRecord(
                lease_id=new_lease_id(),
                token_hash=thash,
                node_id=p.node_id,
                endpoints=p.endpoints,
                allocs=[GpuAlloc(gpu=g, vram_bytes=req.vram_bytes) for g in p.gpus],
                vram_bytes=req.vram_bytes,
                gpu_count=req.gpu_count,
                qos=req.qos,
                ttl_s=req.ttl_s,
                idle_timeout_s=req.idle_timeout_s,
                label=req.label,
                tenant=tenant,
                end_with_sessions=req.end_with_sessions,
                created_at=now,
                expires_at=now + req.ttl_s,
            )
            conflict = await self.store.place_lease(lease, ratio, limits)
            if conflict is not None and conflict.startswith(QUOTA_REFUSAL):
                return conflict, view
            if conflict is None:
                elapsed = time.perf_counter() - started
                self.metrics.placement_seconds.observe(elapsed)
                if self.on_placement is not None:
                    self.on_placement(elapsed)
                self.metrics.placements.labels(strategy.value).inc()
                for n in view:
                    if n.node_id == p.node_id:
                        for g in p.gpus:
                            n.reserved[g] = n.reserved.get(g, 0) + req.vram_bytes
                            if req.qos == QoS.guaranteed:
                                n.guaranteed[g] = n.guaranteed.get(g, 0) + req.vram_bytes
                return lease, view
            self.metrics.placement_conflicts.inc()
            view = None
        return "the pool is busy: placements kept conflicting with other pool managers", []

    async def _retry_after(self) -> int:
        nxt = await self.store.next_expiry()
        if nxt is None:
            return 5
        return int(min(60, max(1, math.ceil(nxt - self.clock()))))

    @staticmethod
    def _quota_error(reason: str) -> QuotaExceeded:
        return QuotaExceeded(reason.removeprefix(QUOTA_REFUSAL) + ": release a lease, or ask an operator to raise "
                             "the quota (fargpu pool tenants set)")  # fmt: skip

    async def create_lease(self, request: LeaseRequest, principal: Principal | None = None) -> tuple[LeaseRecord, str]:
        """Places a lease for `principal` (None: no tenant, no quota: in-process callers); returns it with its
        secret token. Raises QuotaExceeded (403) past the tenant's quota, NoCapacity (503) when there is no room."""
        req = self._check(request)
        timeline.mark("pool.lease_request", f"vram={req.vram_bytes} gpus={req.gpu_count}")
        tenant, limits = await self._limits(principal)
        token = new_token()
        thash = token_hash(token)
        res, _ = await self._try_place(req, thash, None, tenant, limits)
        if isinstance(res, LeaseRecord):
            timeline.mark("pool.lease_placed", f"{res.lease_id} node={res.node_id}")
            return res, token
        if res.startswith(QUOTA_REFUSAL):
            self.metrics.rejections.labels("quota").inc()
            raise self._quota_error(res)
        if req.wait_s <= 0 and self.can_scale_up is not None and await self.can_scale_up(req.vram_bytes, req.gpu_count):
            # A node is coming (or can come): wait for it rather than fail (see autoscaler.py).
            req = dataclasses.replace(req, wait_s=self.config.scale_up_wait_s)
            log.info("no room for a %s lease now; it waits up to %gs for a node to start", format_size(req.vram_bytes),
                     req.wait_s)  # fmt: skip
        if req.wait_s <= 0:
            self.metrics.rejections.labels("no_capacity").inc()
            raise NoCapacity(res, await self._retry_after())
        waiter = _Waiter(req, next(self._seq), asyncio.get_running_loop().create_future(), thash, tenant, limits)
        self._waiters.append(waiter)
        timeline.mark("pool.lease_waits")
        self._kick.set()
        await self.publish_demand()
        try:
            lease = await asyncio.wait_for(asyncio.shield(waiter.future), req.wait_s)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result(), token  # placed in the very last moment
            waiter.future.cancel()
            self.metrics.rejections.labels("wait_timeout").inc()
            reason = f"waited {req.wait_s:g}s: {res}"
            raise NoCapacity(reason, await self._retry_after()) from None
        except asyncio.CancelledError:
            # The caller went away. serve_queue releases anything it places for a cancelled waiter; a lease it
            # placed just before is released here.
            if not waiter.future.cancel() and not waiter.future.cancelled():
                placed = waiter.future.result()
                await self._end(placed.lease_id, LeaseState.released, "the requester went away")
            raise
        finally:
            if waiter in self._waiters and waiter.future.cancelled():
                self._waiters.remove(waiter)
        return lease, token

    async def serve_queue(self) -> None:
        """Tries every waiting request once, in QoS and arrival order, against one snapshot of the pool (kept
        up to date with this pass's own bookings; refreshed when the store refuses a stale choice)."""
        view: list[NodeCapacity] | None = None
        for w in sorted(self._waiters, key=lambda w: w.order):
            if w.future.done():
                if w in self._waiters:
                    self._waiters.remove(w)
                continue
            res, view = await self._try_place(w.request, w.token_hash, view or None, w.tenant, w.limits)
            await asyncio.sleep(0)  # let other work in between: a long queue must not stall the loop
            if not isinstance(res, LeaseRecord):
                if res.startswith(QUOTA_REFUSAL) and not w.future.done():
                    w.future.set_exception(self._quota_error(res))
                continue
            if w in self._waiters:
                self._waiters.remove(w)
            if w.future.done():
                await self._end(res.lease_id, LeaseState.released, "the requester stopped waiting")
                view = None
            else:
                timeline.mark("pool.lease_placed", f"{res.lease_id} node={res.node_id}")
                w.future.set_result(res)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.future.done())

    async def get_lease(self, lease_id: str, principal: Principal | None = None) -> LeaseRecord:
        """The lease; NotFound also when `principal` may not see it (another tenant's ids are not confirmed)."""
        lease = await self.store.get_lease(lease_id)
        if lease is None or (principal is not None and not principal.may_see(lease.tenant)):
            raise NotFound(f"lease {lease_id!r} not found")
        return lease

    async def _end(self, lease_id: str, state: LeaseState, reason: str) -> EndResult:
        res = await self.store.end_lease(lease_id, state, reason, self.clock())
        if res.ended_now and res.lease is not None:
            self.metrics.leases_ended.labels(state.value).inc()
            log.info("lease %s ended (%s): %s", lease_id, state.value, reason)
            await self.store.push_command(
                res.lease.node_id, Command(secrets.token_hex(6), "end_lease", lease_id=lease_id, reason=reason)
            )
            self._room_changed()
        return res

    @staticmethod
    def _ended(lease: LeaseRecord) -> Conflict:
        return Conflict(f"lease {lease.lease_id} has ended ({lease.state.value}): {lease.end_reason}")

    async def renew_lease(
        self, lease_id: str, ttl_s: float | None = None, principal: Principal | None = None
    ) -> LeaseRecord:
        lease = await self.get_lease(lease_id, principal)
        if lease.state != LeaseState.active:
            raise self._ended(lease)
        ttl = lease.ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self.config.max_ttl_s:
            raise BadRequest(f"ttl_s must be in (0, {self.config.max_ttl_s:g}]")
        now = self.clock()
        if lease.expires_at <= now and not self.adopting:  # expired, and the sweeper has not got to it yet
            res = await self._end(lease_id, LeaseState.expired, "the lease expired before it was renewed")
            assert res.lease is not None
            raise self._ended(res.lease)
        renewed = await self.store.renew_lease(lease_id, now + ttl)
        if renewed is None:
            raise NotFound(f"lease {lease_id!r} not found")
        if renewed.state != LeaseState.active:
            raise self._ended(renewed)
        return renewed

    async def _end_or_raise(
        self, lease_id: str, state: LeaseState, reason: str, principal: Principal | None = None
    ) -> LeaseRecord:
        if principal is not None:
            await self.get_lease(lease_id, principal)
        res = await self._end(lease_id, state, reason)
        if res.lease is None:
            raise NotFound(f"lease {lease_id!r} not found")
        if not res.ended_now:
            raise self._ended(res.lease)
        return res.lease

    async def release_lease(self, lease_id: str, principal: Principal | None = None) -> LeaseRecord:
        return await self._end_or_raise(lease_id, LeaseState.released, "released by its owner", principal)

    async def evict_lease(self, lease_id: str, reason: str | None = None) -> LeaseRecord:
        why = "evicted by an operator" + (f": {reason}" if reason else "")
        return await self._end_or_raise(lease_id, LeaseState.evicted, why)

    async def list_leases(self, include_ended: bool = False, principal: Principal | None = None) -> list[LeaseRecord]:
        leases = await self.store.list_leases(include_ended)
        return [lease for lease in leases if principal is None or principal.may_see(lease.tenant)]

    def demand(self) -> list[dict[str, object]]:
        """What this pool manager waits for room for: queued lease requests and leases waiting to move."""
        out: list[dict[str, object]] = [
            {"vram_bytes": w.request.vram_bytes, "gpus": w.request.gpu_count, "qos": w.request.qos.value}
            for w in self._waiters
            if not w.future.done()
        ]
        out += [{"vram_bytes": m.vram_bytes, "gpus": m.gpu_count, "qos": m.qos.value} for m in self._moving.values()]
        return out

    async def publish_demand(self) -> None:
        """Publishes `demand()` in the store, where the pool manager that scales reads every manager's."""
        items = self.demand()
        payload = json.dumps(items) if items else ""
        if payload or self._published:
            await self.store.put_demand(self.manager_id, payload, max(5.0, 10 * self.config.queue_poll_s))
            grew = len(items) > self._published_count
            self._published, self._published_count = payload, len(items)
            if grew and self.on_demand is not None:  # a new request waits: the autoscaler looks at once
                self.on_demand()
