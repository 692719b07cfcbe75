"""The pool's rules: leasing, renewing and ending leases, registering nodes, heartbeats, down-marking, queueing.

`PoolService` sits between the front doors (REST in `api.py`, gRPC in `grpc_service.py`) and the store. It
holds no pool state of its own, only this process's queue of waiting requests, so several pool managers can
serve one Redis store. Time comes from an injectable clock, and `sweep_once` is the whole periodic duty
(expiry, down-marking, clean-up), so tests drive time by hand.

Queueing: a request that asked to wait (`wait_s > 0`) and found no room joins this process's wait queue. The
queue is retried in QoS order, then arrival order, whenever capacity may have appeared here (a lease ended, a
node registered) and every `queue_poll_s` (to see capacity freed through other pool managers). A later, smaller
request may take room that an earlier, bigger one cannot use yet (backfill). When the wait runs out the caller
gets 503 with Retry-After. A lease placed for a waiter that gave up in the meantime is released at once.

Paging (see placement.py for overcommit): each lease carries its idle timeout (the request's, else the pool's
`default_idle_timeout_s`; 0: never) and QoS to its node with every token check, and the node pages its idle
sessions out by that policy. Operators page a session out or in by hand (`page_session`): the pool finds the
session's node in the nodes' last heartbeats and queues a command for it; the node reports the outcome in the
session's `page_command_id` / `page_result` with a later heartbeat.

Tenants: every lease belongs to a tenant (`Principal`, see tenants.py) and counts against that tenant's quota,
which the store checks in the same atomic step that books the VRAM. Listings show a tenant only its own leases
and sessions; admins see everything.

No job lost to the control plane (the re-adoption rule): a lease is never ended for expiry or node silence while
the pool could not have heard from its client or node. For `adopt_grace_s` after this pool manager starts, and
after any stretch in which its store was unreachable, the sweeper neither expires leases nor marks nodes down;
in that window every node's heartbeat re-adopts the leases it reports live sessions for (their expiry moves to
now + TTL), and a renewal of a lease whose expiry passed meanwhile succeeds. After the window the usual rules
apply, so a lease nobody reported or renewed expires then. A lease created with `end_with_sessions` (the stub's
own) ends as soon as a node has reported a session of it and then reports none (unless the session was parked:
it resumes later); nodes heartbeat at once when a session starts or ends. A node whose last heartbeat is older
than `stale_after_s` gets no new lease that another node can take (it is not marked down for that; its leases
run on) until it heartbeats again; clients that cannot connect to a node name it in `avoid_nodes` and are placed
elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fargpu import timeline
from fargpu.pool_manager.errors import BadRequest, Conflict, Forbidden, NoCapacity, NotFound, QuotaExceeded
from fargpu.pool_manager.metrics import PoolMetrics
from fargpu.pool_manager.models import (
    ApiKeyRecord,
    GpuAlloc,
    GpuInfo,
    LeaseRecord,
    LeaseState,
    NodeRecord,
    NodeState,
    PageTarget,
    PoolStatus,
    QoS,
    SessionInfo,
    TenantRecord,
)
from fargpu.pool_manager.placement import Strategy, place, why_not
from fargpu.pool_manager.store import QUOTA_REFUSAL, Command, EndResult, NodeCapacity, Store, TenantLimits
from fargpu.pool_manager.tenants import (
    ADMIN_TENANT,
    Principal,
    key_hash,
    new_api_key,
    new_key_id,
    valid_tenant_name,
)
from fargpu.pool_manager.tokens import new_lease_id, new_token, token_hash
from fargpu.pool_manager.units import format_size

log = logging.getLogger("fargpu.pool_manager")


@dataclass
class ServiceConfig:
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 10.0
    sweep_interval_s: float = 1.0
    default_ttl_s: float = 300.0
    max_ttl_s: float = 86400.0
    max_wait_s: float = 600.0
    strategy: Strategy = Strategy.pack
    ended_retention_s: float = 3600.0
    queue_poll_s: float = 0.5
    place_attempts: int = 32
    max_sessions_per_lease: int = 16  # sent to nodes with each valid lease token (ValidateTokenReply.max_sessions)
    default_idle_timeout_s: float = 300.0  # a lease's idle timeout when its request names none; 0: never idle-paged
    overcommit_ratio: float = 1.0  # leases may book capacity x this (>= 1), unless a node registered its own ratio
    scale_up_wait_s: float = 120.0  # a request finding no room waits this long when the autoscaler can add a node
    stale_after_s: float | None = None  # no new leases on a node silent this long (None: only down nodes skipped)
    adopt_grace_s: float = 0.0  # after a start or a store outage: no expiry or down-marking; nodes re-adopt leases
    end_grace_s: float = 1.0  # an end_with_sessions lease ends once its node has reported no session this long

    def __post_init__(self) -> None:
        if not 1.0 <= self.overcommit_ratio < math.inf:
            raise ValueError(f"the overcommit ratio must be at least 1 (got {self.overcommit_ratio:g})")
        if not 0 <= self.default_idle_timeout_s < math.inf:
            raise ValueError(f"the default idle timeout must be 0 (never) or more, not {self.default_idle_timeout_s:g}")


@dataclass(frozen=True)
class LeaseRequest:
    vram_bytes: int
    gpu_count: int = 1
    qos: QoS = QoS.standard
    ttl_s: float | None = None
    wait_s: float = 0.0
    label: str | None = None
    strategy: Strategy | None = None
    idle_timeout_s: float | None = None  # None: the pool's default_idle_timeout_s; 0: never idle-paged
    end_with_sessions: bool = False  # end the lease when its last session on the node ends
    avoid_nodes: tuple[str, ...] = ()  # nodes the client could not reach: place elsewhere


@dataclass(frozen=True)
class PageCommand:
    """A page-out or page-in queued for a session's node."""

    command_id: str
    session_id: str
    node_id: str
    action: str  # "page-out" | "page-in"
    to: PageTarget | None  # page-out only


@dataclass
class _Waiter:
    request: LeaseRequest
    seq: int
    future: asyncio.Future[LeaseRecord] = field(repr=False)
    token_hash: str = ""
    tenant: str = ""
    limits: TenantLimits | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (self.request.qos.priority, self.seq)


class PoolService:
    def __init__(
        self,
        store: Store,
        config: ServiceConfig | None = None,
        metrics: PoolMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config or ServiceConfig()
        self.metrics = metrics or PoolMetrics()
        self.clock = clock
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._kick = asyncio.Event()
        self._place_lock = asyncio.Lock()
        self._rng = random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.on_placement: Callable[[float], None] | None = None  # seconds per successful placement (benchmark)
        # Set by the autoscaler: whether a node can still be added (then a request that finds no room waits for
        # it, up to scale_up_wait_s, instead of failing at once).
        self.can_scale_up: Callable[[int, int], Awaitable[bool]] | None = None  # (VRAM per GPU, GPUs)
        # Set by the autoscaler: called when this pool manager publishes new demand, so that a waiting request
        # starts a node at once rather than at the autoscaler's next pass.
        self.on_demand: Callable[[], None] | None = None
        self._room = asyncio.Event()  # set (and replaced) when room may have appeared: wakes leases waiting to move
        self.manager_id = secrets.token_hex(6)  # names this pool manager's published demand in the store
        self._moving: dict[str, LeaseRecord] = {}  # leases waiting here for room to move (resume, relocate)
        self._published = ""
        self._published_count = 0  # requests in what was published last
        self._adopt_until = 0.0
        self._reported: dict[str, set[str]] = {}  # node id -> leases its last heartbeat here had sessions of
        self._parked: set[str] = set()  # leases whose sessions were last reported parked (they resume later)
        self._absent: dict[str, dict[str, float]] = {}  # node -> lease -> when the node first reported none of it

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, *, background: bool = True) -> None:
        """Starts the sweeper and the wait-queue loop (tests that drive time by hand pass background=False)."""
        self._adopt_until = self.clock() + self.config.adopt_grace_s
        if background:
            self._tasks = [
                asyncio.create_task(self._sweep_loop(), name="pool-sweep"),
                asyncio.create_task(self._queue_loop(), name="pool-queue"),
            ]

    async def stop(self) -> None:
        # The loops also end on the flag: a store client may turn a cancellation that lands inside a call into an
        # error of its own (seen with redis-py during a command), and the loops go on after errors.
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            for t in pending:
                log.warning("pool background task %s did not stop in 10 s; leaving it", t.get_name())
        self._tasks = []
        for w in self._waiters:
            if not w.future.done():
                w.future.cancel()
        self._waiters.clear()

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            try:
                await self.sweep_once()
            except Exception as e:  # a store hiccup must not stop the sweeper; nobody could renew meanwhile
                self.store_trouble()
                log.warning("pool sweep failed (%s: %s); no lease expires until the store has been back for %gs",
                            type(e).__name__, e, self.config.adopt_grace_s)  # fmt: skip
            await asyncio.sleep(self.config.sweep_interval_s)

    async def _queue_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.queue_poll_s)
            self._kick.clear()
            try:
                await self.serve_queue()
                await self.publish_demand()
            except Exception:
                log.exception("pool wait queue failed")

    def _room_changed(self) -> None:
        """Room may have appeared here (a lease ended, a node registered): the wait queue and the leases waiting to
        move try again now."""
        self._kick.set()
        self._room.set()
        self._room = asyncio.Event()

    def store_trouble(self) -> None:
        """The store failed a call: clients and nodes may not have been heard; widen the re-adoption window."""
        self._adopt_until = max(self._adopt_until, self.clock() + self.config.adopt_grace_s)

    @property
    def adopting(self) -> bool:
        """True in the re-adoption window (after a start or a store outage): nothing expires or goes down."""
        return self.clock() < self._adopt_until

    # --- tenants and keys --------------------------------------------------------------------------------
    async def authenticate_key(self, key: str) -> Principal | None:
        """Who presents `key`: None when it is no live key of an enabled tenant."""
        rec = await self.store.api_key_by_hash(key_hash(key))
        if rec is None:
            return None
        if rec.admin:
            return Principal(rec.tenant or ADMIN_TENANT, admin=True, key_id=rec.key_id)
        tenant = await self.store.get_tenant(rec.tenant)
        if tenant is None or tenant.disabled:
            return None
        return Principal(rec.tenant, key_id=rec.key_id)

    async def put_tenant(
        self, name: str, vram_quota_bytes: int | None = None, max_leases: int | None = None, disabled: bool = False
    ) -> TenantRecord:
        """Creates or updates a tenant (its quota, or enabled/disabled)."""
        if not valid_tenant_name(name) or name == ADMIN_TENANT:
            raise BadRequest(f"a tenant name is 1-64 letters, digits, '-', '_' or '.', and not {ADMIN_TENANT!r}")
        if (vram_quota_bytes is not None and vram_quota_bytes < 0) or (max_leases is not None and max_leases < 0):
            raise BadRequest("quotas must be 0 or more (leave one out for no limit)")
        old = await self.store.get_tenant(name)
        rec = TenantRecord(name=name, vram_quota_bytes=vram_quota_bytes, max_leases=max_leases,
                           created_at=old.created_at if old else self.clock(), disabled=disabled)  # fmt: skip
        await self.store.put_tenant(rec)
        log.info("tenant %s %s (VRAM quota %s, max leases %s%s)", name, "updated" if old else "created",
                 vram_quota_bytes, max_leases, ", disabled" if disabled else "")  # fmt: skip
        return rec

    async def tenant(self, name: str) -> TenantRecord:
        rec = await self.store.get_tenant(name)
        if rec is None:
            raise NotFound(f"tenant {name!r} not found")
        return rec

    async def create_api_key(
        self, tenant: str, *, admin: bool = False, label: str | None = None, key: str | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for `tenant` (or an admin key); returns it with the secret, which is kept nowhere.
        `key`: register this secret instead of a new one (the local key file)."""
        if not admin:
            await self.tenant(tenant)
        secret = key or new_api_key()
        rec = ApiKeyRecord(key_id=new_key_id(), tenant=tenant if not admin else (tenant or ADMIN_TENANT),
                           key_hash=key_hash(secret), admin=admin, label=label, created_at=self.clock())  # fmt: skip
        await self.store.put_api_key(rec)
        log.info("API key %s created for %s%s", rec.key_id, rec.tenant, " (admin)" if admin else "")
        return rec, secret

    async def ensure_api_key(self, tenant: str, secret: str, label: str) -> None:
        """Registers `secret` as a key of `tenant` (created without quota if missing) unless it is already live."""
        if await self.store.api_key_by_hash(key_hash(secret)) is not None:
            return
        if await self.store.get_tenant(tenant) is None:
            await self.put_tenant(tenant)
        await self.create_api_key(tenant, label=label, key=secret)

    async def revoke_api_key(self, key_id: str) -> ApiKeyRecord:
        rec = await self.store.revoke_api_key(key_id, self.clock())
        if rec is None:
            raise NotFound(f"API key {key_id!r} not found")
        log.info("API key %s of %s revoked", key_id, rec.tenant)
        return rec

    async def _limits(self, principal: Principal | None) -> tuple[str, TenantLimits | None]:
        if principal is None:
            return "", None
        if principal.admin:
            return principal.tenant, None
        t = await self.tenant(principal.tenant)
        if t.disabled:
            raise Forbidden(f"tenant {t.name} is disabled")
        return t.name, TenantLimits(t.vram_quota_bytes, t.max_leases)

    # --- leases ------------------------------------------------------------------------------------------
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

    # --- nodes -------------------------------------------------------------------------------------------
    async def register_node(
        self,
        node_id: str,
        endpoints: list[str],
        backend: str,
        version: str,
        gpus: list[GpuInfo],
        overcommit: float = 0.0,
        capabilities: list[str] | None = None,
    ) -> NodeRecord:
        """`overcommit`: the node's own ratio (>= 1), 0 for the pool's. `capabilities`: e.g. ["park"]."""
        if not endpoints:
            raise BadRequest("a node must register at least one endpoint")
        if len({g.index for g in gpus}) != len(gpus):
            raise BadRequest("GPU indexes of a node must be distinct")
        if overcommit != 0 and not 1 <= overcommit < math.inf:
            raise BadRequest(f"a node's overcommit ratio must be at least 1, or 0 for the pool's (got {overcommit:g})")
        now = self.clock()
        node = NodeRecord(
            node_id=node_id or f"node-{secrets.token_hex(4)}",
            endpoints=endpoints,
            backend=backend,
            version=version,
            gpus=gpus,
            registered_at=now,
            last_heartbeat=now,
            overcommit=overcommit,
            capabilities=sorted(set(capabilities or [])),
        )
        rec = await self.store.register_node(node)
        log.info("node %s registered: %d GPU(s), endpoints %s", rec.node_id, len(gpus), ", ".join(endpoints))
        timeline.mark("pool.node_registered", rec.node_id)
        self._room_changed()
        return rec

    async def node_heartbeat(
        self, node_id: str, gpus: list[GpuInfo], sessions: list[SessionInfo], draining: bool = False
    ) -> tuple[bool, list[tuple[str, str]]]:
        """Records a heartbeat. Returns (known, leases to end): the node must register again when not known,
        and must end the sessions of leases that are no longer active on it."""
        known = await self.store.heartbeat(node_id, gpus, sessions, draining, self.clock())
        self.metrics.heartbeats.inc()
        if not known:
            return False, []
        stale: list[tuple[str, str]] = []
        by_lease: dict[str, list[SessionInfo]] = {}
        for sess in sessions:
            by_lease.setdefault(sess.lease_id, []).append(sess)
        reported = sorted(by_lease)
        for lease_id in reported:
            lease = await self.store.get_lease(lease_id)
            live = [x for x in by_lease[lease_id] if x.state != "parked"]  # parked ones are reports, not sessions
            if lease is not None and lease.node_id == node_id and lease.state == LeaseState.active:
                await self._note_parked(lease, by_lease[lease_id], live)
            if not live:
                continue
            if lease is None:
                stale.append((lease_id, "the pool does not know this lease"))
            elif lease.node_id != node_id:
                where = f"placed on node {lease.node_id}" if lease.node_id else "parked"
                stale.append((lease_id, f"the lease is {where}"))
            elif lease.state != LeaseState.active:
                stale.append((lease_id, f"the lease has ended ({lease.state.value}): {lease.end_reason}"))
            else:
                if lease.end_with_sessions and not lease.sessions_seen:
                    await self.store.mark_sessions_seen(lease_id)
                if self.adopting:  # re-adoption: the node proves the lease is in use
                    await self.store.renew_lease(lease_id, self.clock() + lease.ttl_s)
        # Leases this node reported last time (to this process: a node keeps its stream to one pool manager) and
        # not now. The first heartbeat this process gets from a node (after a restart, say) is compared with the
        # store instead: a lease seen with sessions before, and none now, ended while nobody was listening.
        for lid in reported:  # a parked session comes back on resume: its lease must not end with its worker
            states = {s.state for s in sessions if s.lease_id == lid}
            if "parked" in states:
                self._parked.add(lid)
            elif states:
                self._parked.discard(lid)
        # A lease ends only once it has been missing for end_grace_s: a worker that exits as its session is parked
        # is reported gone a moment before the parked session is reported.
        if node_id in self._reported:
            gone = self._reported[node_id] - set(reported)
        else:
            gone = set(await self.store.active_lease_ids_on(node_id)) - set(reported)
        now = self.clock()
        absent = self._absent.setdefault(node_id, {})
        for lease_id in reported:
            absent.pop(lease_id, None)
        for lease_id in gone:
            absent.setdefault(lease_id, now)
        missing = {lid for lid, since in absent.items() if now - since >= self.config.end_grace_s}
        for lease_id in missing:
            del absent[lease_id]
        self._reported[node_id] = set(reported) | set(absent)  # the ones still in their grace: compared again
        for lease_id in sorted(missing):
            lease = await self.store.get_lease(lease_id)
            if (lease is not None and lease.end_with_sessions and lease.sessions_seen and lease_id not in self._parked
                    and lease.parked_ref is None and lease.state == LeaseState.active and lease.node_id == node_id):
                await self._end(lease_id, LeaseState.released, "its last session ended")  # fmt: skip
        return True, stale

    async def get_node(self, node_id: str) -> NodeRecord:
        node = await self.store.get_node(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} not found")
        return node

    async def drain_node(self, node_id: str, reason: str | None = None) -> NodeRecord:
        why = "drained by an operator" + (f": {reason}" if reason else "")
        node = await self.store.set_draining(node_id, why)
        if node is None:
            raise NotFound(f"node {node_id!r} not found")
        if node.state == NodeState.down:
            raise Conflict(f"node {node_id} is down: {node.state_reason}")
        await self.store.push_command(node_id, Command(secrets.token_hex(6), "drain", reason=why))
        return node

    async def undrain_node(self, node_id: str) -> NodeRecord:
        """Draining -> up: leases are placed on the node again, and the node is told to accept new sessions."""
        node = await self.store.set_undrained(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} not found")
        if node.state == NodeState.down:
            raise Conflict(f"node {node_id} is down: {node.state_reason}; it comes back up when it registers again")
        await self.store.push_command(node_id, Command(secrets.token_hex(6), "undrain"))
        return node

    async def page_session(self, session_id: str, action: str, to: PageTarget | None = None) -> PageCommand:
        """Queues a page-out (`action` "page-out", to `to`) or page-in for the session's node. NotFound when no
        live node reports the session; Conflict when its node is down or has stopped heartbeating."""
        if action not in ("page-out", "page-in"):
            raise BadRequest(f"unknown paging action {action!r}")
        node = next((n for n in await self.store.list_nodes() if any(s.session_id == session_id for s in n.sessions)),
                    None)  # fmt: skip
        if node is None:
            raise NotFound(f"session {session_id!r} not found: no node reports it")
        age = self.clock() - node.last_heartbeat
        if node.state == NodeState.down:
            raise Conflict(f"node {node.node_id} of session {session_id} is down: {node.state_reason}")
        if age > self.config.heartbeat_timeout_s:
            raise Conflict(
                f"node {node.node_id} of session {session_id} has not heartbeated for {age:.0f}s "
                f"(limit {self.config.heartbeat_timeout_s:g}s)"
            )
        command_id = secrets.token_hex(6)
        if action == "page-out":
            target = to or PageTarget.auto
            cmd = Command(command_id, "page_out", session_id=session_id, to=target.value)
        else:
            target = None
            cmd = Command(command_id, "page_in", session_id=session_id)
        await self.store.push_command(node.node_id, cmd)
        log.info("%s of session %s queued for node %s (command %s)", action, session_id, node.node_id, command_id)
        return PageCommand(command_id, session_id, node.node_id, action, target)

    async def validate_token(self, node_id: str, thash: str) -> tuple[LeaseRecord | None, str]:
        """Checks a token hash presented to node `node_id`. Returns (lease, "") or (None, why not)."""
        lease = await self.store.lease_by_token_hash(thash)
        if lease is None:
            return None, "unknown lease token"
        if lease.state != LeaseState.active:
            return None, f"lease {lease.lease_id} has ended ({lease.state.value}): {lease.end_reason}"
        if lease.expires_at <= self.clock():
            return None, f"lease {lease.lease_id} has expired"
        if not lease.node_id:
            return None, f"lease {lease.lease_id} is parked: its client resumes it through the pool (resume)"
        if lease.node_id != node_id:
            return None, f"lease {lease.lease_id} is placed on node {lease.node_id}, not on {node_id}"
        return lease, ""

    def idle_timeout_of(self, lease: LeaseRecord) -> float:
        """The lease's idle timeout in seconds (0: never idle-paged); the pool's default for older records."""
        return self.config.default_idle_timeout_s if lease.idle_timeout_s is None else lease.idle_timeout_s

    async def next_commands(self, node_id: str, timeout_s: float) -> list[Command]:
        return await self.store.take_commands(node_id, timeout_s)

    # --- leases that outlive their node: parking, resuming, relocating --------------------------------------
    async def _note_parked(self, lease: LeaseRecord, reported: list[SessionInfo], live: list[SessionInfo]) -> None:
        """Keeps a lease's `parked_ref` in step with its node's report: set when every session the node reports
        for it is parked ("parked KEY BYTES NS" in the page_result), cleared when one is live again (restored on
        the same node). A lease stays bound to its node while parked; the autoscaler unbinds it
        (`unbind_parked`) when it stops the node."""
        if not live:
            result = reported[0].page_result or ""
            words = result.split()
            ref = words[1] if len(words) > 1 and words[0] == "parked" else f"session {reported[0].session_id}"
            if lease.parked_ref != ref:
                await self.store.move_lease(lease.model_copy(update={"parked_ref": ref}))
                log.info("lease %s: its sessions on node %s are parked (%s)", lease.lease_id, lease.node_id, ref)
        elif lease.parked_ref is not None:
            await self.store.move_lease(lease.model_copy(update={"parked_ref": None}))

    async def unbind_parked(self, node_id: str) -> list[str]:
        """Binds the node's parked leases (`parked_ref` set) to no node, giving their bookings back, so that the
        node can go; their clients resume them elsewhere (`resume_lease`). Returns their ids."""
        moved = []
        for lease_id in await self.store.active_lease_ids_on(node_id):
            lease = await self.store.get_lease(lease_id)
            if lease is None or lease.parked_ref is None or lease.node_id != node_id:
                continue
            unbound = lease.model_copy(update={"node_id": "", "endpoints": [], "allocs": []})
            async with self._place_lock:
                why = await self.store.move_lease(unbound, self.config.overcommit_ratio)
            if why is None:
                moved.append(lease_id)
                log.info("lease %s (parked, %s) is bound to no node now: node %s goes", lease_id, lease.parked_ref,
                         node_id)  # fmt: skip
        return moved

    async def resume_lease(self, lease_id: str, wait_s: float | None = None) -> LeaseRecord:
        """Where the lease's client connects now: a lease bound to no node (parked, its node stopped) is placed
        on a node first, waiting up to `wait_s` (default scale_up_wait_s) for one to start; the client then
        reconnects there with its resume key and the node restores its sessions from the park store."""
        lease = await self.get_lease(lease_id)
        if lease.state != LeaseState.active:
            raise self._ended(lease)
        if lease.node_id:
            return lease
        return await self.relocate(lease_id, wait_s=self.config.scale_up_wait_s if wait_s is None else wait_s)

    async def relocate(self, lease_id: str, to_node: str | None = None, *, wait_s: float = 0.0) -> LeaseRecord:
        """Moves an active lease to `to_node` (or where placement puts it, never its current node): its bookings
        move atomically, the lease's token is valid on the new node only (its client reconnects there; parked
        sessions are restored from the park store), and the old node gets an EndLease for anything it still runs
        of the lease. Waits up to `wait_s` for room (the autoscaler sees the wait as demand). NoCapacity when
        there is none."""
        lease = await self.get_lease(lease_id)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                if lease.state != LeaseState.active:
                    raise self._ended(lease)
                if to_node is not None and to_node == lease.node_id:
                    raise Conflict(f"lease {lease_id} is on node {to_node} already")
                room = self._room  # taken before the try: a node that registers after it still wakes the wait below
                async with self._place_lock:
                    res = await self._try_move(lease, to_node)
                if isinstance(res, LeaseRecord):
                    break
                if time.monotonic() >= deadline:
                    raise NoCapacity(f"lease {lease_id} cannot move: {res}", await self._retry_after())
                self._moving[lease_id] = lease
                await self.publish_demand()
                with contextlib.suppress(TimeoutError):  # woken when room appears here; polled for other managers'
                    await asyncio.wait_for(room.wait(), min(self.config.queue_poll_s,
                                                            max(0.0, deadline - time.monotonic())))
                lease = await self.get_lease(lease_id)
        finally:
            if self._moving.pop(lease_id, None) is not None:
                await self.publish_demand()
        old = lease.node_id
        if old:
            why = f"the lease moved to node {res.node_id}"
            await self.store.push_command(
                old, Command(secrets.token_hex(6), "end_lease", lease_id=lease_id, reason=why)
            )
        log.info("lease %s moved from %s to node %s", lease_id, old or "the park store", res.node_id)
        self.metrics.relocations.inc()
        return res

    async def _try_move(self, lease: LeaseRecord, to_node: str | None) -> LeaseRecord | str:
        ratio = self.config.overcommit_ratio
        why = "no node is up"
        for _ in range(self.config.place_attempts):
            view = [n for n in await self.store.placement_view() if n.node_id != lease.node_id]
            if to_node is not None:
                view = [n for n in view if n.node_id == to_node]
                if not view:
                    return f"node {to_node} is unknown"
            p = place(view, lease.vram_bytes, lease.gpu_count, self.config.strategy, self._rng, 4, qos=lease.qos,
                      overcommit=ratio)  # fmt: skip
            if p is None:
                return why_not(view, lease.vram_bytes, lease.gpu_count, qos=lease.qos, overcommit=ratio)
            moved = lease.model_copy(update={
                "node_id": p.node_id, "endpoints": p.endpoints, "moves": lease.moves + 1,
                "allocs": [GpuAlloc(gpu=g, vram_bytes=lease.vram_bytes) for g in p.gpus]})  # fmt: skip
            conflict = await self.store.move_lease(moved, ratio)
            if conflict is None:
                return moved
            why = conflict
            fresh = await self.store.get_lease(lease.lease_id)
            if fresh is None or fresh.state != LeaseState.active:
                return f"lease {lease.lease_id} has ended"
            if fresh.node_id != lease.node_id:
                return f"lease {lease.lease_id} moved meanwhile (to {fresh.node_id or 'the park store'})"
        return why

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

    # --- periodic duty -----------------------------------------------------------------------------------
    async def sweep_once(self) -> None:
        """Ends expired leases, marks silent nodes down (ending their leases, except parked ones: those are bound
        to no node and resume elsewhere), forgets old ended leases."""
        now = self.clock()
        if self.adopting:  # nodes and clients may not have been heard yet: end nothing for silence
            await self.store.purge_ended(now - self.config.ended_retention_s)
            return
        for lease_id in await self.store.expired_lease_ids(now):
            await self._end(lease_id, LeaseState.expired, "the lease expired: it was not renewed in time")
        timeout = self.config.heartbeat_timeout_s
        for node in await self.store.list_nodes():
            if node.state == NodeState.down:
                lease_ids = await self.store.active_lease_ids_on(node.node_id)  # left over by a crash mid-way
                reason = node.state_reason or f"node {node.node_id} is down"
            elif node.last_heartbeat < now - timeout:
                age = now - node.last_heartbeat
                reason = (
                    f"node {node.node_id} stopped responding: no heartbeat for {age:.0f}s "
                    f"(limit {timeout:g}s); it was marked down"
                )
                marked = await self.store.mark_down(node.node_id, reason, now - timeout)
                if marked is None:
                    continue
                log.warning("%s; ending %d lease(s)", reason, len(marked))
                lease_ids = marked
            else:
                continue
            parked = set(await self.unbind_parked(node.node_id))  # their state is in the park store: they live on
            for lease_id in lease_ids:
                if lease_id not in parked:
                    await self._end(lease_id, LeaseState.lost, reason)
        await self.store.purge_ended(now - self.config.ended_retention_s)

    # --- views -------------------------------------------------------------------------------------------
    async def _visible_leases(self, principal: Principal | None) -> set[str] | None:
        """Ids of the leases `principal` may see sessions of (None: all)."""
        if principal is None or principal.admin:
            return None
        return {lease.lease_id for lease in await self.store.list_leases() if lease.tenant == principal.tenant}

    async def list_nodes(self, principal: Principal | None = None) -> list[NodeRecord]:
        nodes = await self.store.list_nodes()
        mine = await self._visible_leases(principal)
        if mine is not None:
            for n in nodes:
                n.sessions = [s for s in n.sessions if s.lease_id in mine]
        return nodes

    async def list_sessions(self, principal: Principal | None = None) -> list[SessionInfo]:
        mine = await self._visible_leases(principal)
        return [s for n in await self.store.list_nodes() for s in n.sessions if mine is None or s.lease_id in mine]

    async def status(self) -> PoolStatus:
        nodes = await self.store.list_nodes()
        leases = await self.store.list_leases()
        live = [n for n in nodes if n.state != NodeState.down]
        return PoolStatus(
            nodes_up=sum(1 for n in nodes if n.state == NodeState.up),
            nodes_draining=sum(1 for n in nodes if n.state == NodeState.draining),
            nodes_down=sum(1 for n in nodes if n.state == NodeState.down),
            gpus=sum(len(n.gpus) for n in live),
            vram_total_bytes=sum(n.vram_total_bytes for n in live),
            vram_reserved_bytes=sum(n.vram_reserved_bytes for n in nodes),
            vram_used_bytes=sum(n.vram_used_bytes for n in live),
            leases_active=len(leases),
            sessions=sum(len(n.sessions) for n in live),
            store=self.store.name,
        )

    async def refresh_metrics(self) -> None:
        nodes = await self.store.list_nodes()
        leases = await self.store.list_leases()
        self.metrics.refresh(nodes, leases, self.clock(), self.config.overcommit_ratio)
