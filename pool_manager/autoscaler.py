"""The autoscaler: starts GPU nodes when work waits for room, and stops them when they sit empty.

One loop per pool manager; each pass (`tick`) first takes the store's `autoscaler` lock (`Store.try_lock`, a
lease of `lock_ttl_s` that the holder extends every pass), so with several pool managers on one Redis exactly
one of them scales at a time, and another takes over within `lock_ttl_s` when it stops. A pass:

1. Demand: every pool manager publishes what waits in it for room (queued lease requests, parked leases being
   resumed: `PoolService.publish_demand`). A request that fits no up node is unmet. A pass runs every
   `interval_s`, and at once when this pool manager publishes a new waiting request (`PoolService.on_demand`),
   so a lease at zero nodes starts a node without waiting for the next pass.
2. Up: below `min_nodes`, or with unmet demand and no node already starting, ask the provider for one more node
   (never beyond `max_nodes`). A node that runs but has not registered `start_timeout_s` later is stopped (a
   pod still Pending is not: it waits for the cluster autoscaler to add a machine).
   While a node can still be added, a lease request that finds no room waits for it (`scale_up_wait_s`, the
   service's `can_scale_up` hook) instead of failing: a lease arriving at zero nodes is answered once the new
   node has registered and the lease is placed on it.
3. Idle sessions (`park_idle_s`, 0: off): a resident one is paged out (a PageOut command); a paged one is parked
   (a Park command) where its node offers parking (the "park" capability it registers with, when it has a park
   store) and the session has no park blocker. Otherwise parking is a no-op, logged once per session with the
   reason, and the session stays paged on its node (which then cannot be stopped).
4. Down: a node the provider runs that runs no session and holds no lease except parked ones (every session of
   the lease parked: `LeaseRecord.parked_ref`) is idle; after `node_idle_s` idle it is drained, its parked leases
   are bound to no node (their clients resume them elsewhere: `PoolService.resume_lease`), it is checked again
   (a lease may have landed meanwhile: undrain and keep it), stopped through the provider and removed from the
   pool. Never below `min_nodes`, never while demand is unmet,
   never within `scale_down_cooldown_s` of a scale-up, one node per pass (hysteresis: up at once, down slowly).
   Idle timers live in the lock holder; a new holder starts them afresh.

Leases bound to no node (their sessions parked) hold nothing on any node, so with no leases at all, or only
parked ones, the pool scales to `min_nodes` (default 0)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fargpu import timeline
from fargpu.pool_manager.errors import PoolError
from fargpu.pool_manager.models import NodeRecord, NodeState, QoS
from fargpu.pool_manager.placement import Strategy, place
from fargpu.pool_manager.providers.base import NodeProvider, ProviderError, ProviderNode, ProviderState
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.store import Command
from fargpu.pool_manager.units import format_size

log = logging.getLogger("fargpu.pool_manager.autoscaler")

LOCK = "autoscaler"
PAGED_STATES = ("paged-host", "paged-disk")


@dataclass
class AutoscalerConfig:
    min_nodes: int = 0
    max_nodes: int = 4
    node_idle_s: float = 60.0  # a node without leases and sessions this long is drained and stopped
    park_idle_s: float = 0.0  # sessions idle this long are paged out, then parked where the node can (0: off)
    interval_s: float = 1.0
    lock_ttl_s: float = 10.0
    start_timeout_s: float = 180.0  # a node that runs but has not registered by then is stopped
    scale_down_cooldown_s: float = 30.0  # no scale-down this long after a scale-up

    def __post_init__(self) -> None:
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"need 0 <= min nodes <= max nodes (got {self.min_nodes} and {self.max_nodes})")
        if self.lock_ttl_s <= self.interval_s:
            raise ValueError("the autoscaler lock's TTL must be longer than its interval, or the lock lapses")


@dataclass
class _Demand:
    vram_bytes: int
    gpus: int
    qos: QoS


def parse_demand(payloads: list[str]) -> list[_Demand]:
    out: list[_Demand] = []
    for payload in payloads:
        try:
            items = json.loads(payload)
            for d in items:
                out.append(_Demand(int(d["vram_bytes"]), int(d["gpus"]), QoS(d["qos"])))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored malformed demand in the store: %.200r", payload)
    return out


@dataclass
class ScaleStatus:
    """What `GET /v1/scaling` shows."""

    provider: str
    leader: bool
    min_nodes: int
    max_nodes: int
    node_idle_s: float
    park_idle_s: float
    waiting: int = 0
    unmet: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)
    last_action: str = ""


class Autoscaler:
    def __init__(
        self,
        service: PoolService,
        provider: NodeProvider,
        config: AutoscalerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.store = service.store
        self.provider = provider
        self.config = config or AutoscalerConfig()
        self.clock = clock
        self.owner = service.manager_id
        self.leader = False
        self.last_action = ""
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle_since: dict[str, float] = {}
        self._asked: dict[str, float] = {}  # node id -> when the provider was asked for it (clock)
        self._unregistered: dict[str, float] = {}  # node id -> when first seen running but not registered
        self._last_up = -1e18
        self._stopped: set[str] = set()  # nodes this autoscaler stopped (removed from the pool once down)
        self._paged: dict[str, float] = {}  # session id -> when a page-out was asked for
        self._parked: dict[str, float] = {}  # session id -> when a park was asked for
        self._told: set[str] = set()  # sessions whose "cannot park" was logged
        self._max_told = False
        self._last_provider: list[ProviderNode] = []
        self._unmet = 0
        self._waiting = 0
        self._shape: tuple[int, int] | None = None  # the largest provider node seen: (GPUs, bytes per GPU)
        self._too_big_told = False
        self._wake = asyncio.Event()  # set when new demand is published here: the next pass runs at once

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.service.can_scale_up = self.can_scale_up
        self.service.on_demand = self._wake.set
        self._task = asyncio.create_task(self._loop(), name="pool-autoscaler")

    async def stop(self) -> None:
        self._stopping = True
        self.service.can_scale_up = None
        self.service.on_demand = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=10)
            self._task = None
        with contextlib.suppress(Exception):
            await self.store.unlock(LOCK, self.owner)
        self.leader = False

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except Exception:  # a store or provider hiccup must not end scaling
                log.exception("autoscaler pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.interval_s)
            self._wake.clear()

    async def can_scale_up(self, vram_bytes: int = 0, gpus: int = 1) -> bool:
        """Whether a request that finds no room should wait for a node: one is starting, or one may start, and
        the provider's nodes (as far as this pool manager has seen one) are big enough for it."""
        if not self.fits_provider_node(vram_bytes, gpus):
            return False
        live = [n for n in await self.store.list_nodes() if n.state != NodeState.down]
        return len(live) < self.config.max_nodes or any(p.state == ProviderState.starting for p in self._last_provider)

    def fits_provider_node(self, vram_bytes: int, gpus: int) -> bool:
        """False when a node of the provider's (the largest one seen registering) could never hold the request."""
        if self._shape is None:
            return True  # not seen one yet: start one and see
        count, per_gpu = self._shape
        return gpus <= count and vram_bytes <= per_gpu * max(1.0, self.service.config.overcommit_ratio)

    # --- one pass ----------------------------------------------------------------------------------------
    async def tick(self) -> None:
        m = self.service.metrics
        held = await self.store.try_lock(LOCK, self.owner, self.config.lock_ttl_s)
        if held != self.leader:
            log.info("this pool manager %s the autoscaler lock", "holds" if held else "no longer holds")
            self._idle_since.clear()
        self.leader = held
        m.scaler_leader.set(1 if held else 0)
        if not held:
            return
        now = self.clock()
        nodes = await self.store.list_nodes()
        live = {n.node_id: n for n in nodes if n.state != NodeState.down}
        provided = await self.provider.list()
        self._last_provider = provided
        for s in ProviderState:
            m.provider_nodes.labels(s.value).set(sum(1 for p in provided if p.state == s))
        by_id = {p.node_id: p for p in provided if p.node_id}
        for node_id in [n for n in self._asked if n in live]:
            m.node_start_seconds.observe(max(0.0, now - self._asked.pop(node_id)))
            log.info("node %s registered", node_id)
        for n in live.values():
            if n.node_id in by_id and n.gpus:
                shape = (len(n.gpus), max(g.total_bytes for g in n.gpus))
                self._shape = shape if self._shape is None else max(self._shape, shape)
        starting = [p for p in provided if p.state != ProviderState.stopping and p.node_id not in live]
        await self._stop_late_starters(starting, now)
        await self._forget_stopped(nodes, by_id)

        demand = parse_demand(await self.store.demand())
        view = await self.store.placement_view()
        ratio = self.service.config.overcommit_ratio
        unmet = [d for d in demand if place(view, d.vram_bytes, d.gpus, Strategy.pack, qos=d.qos, overcommit=ratio)
                 is None]  # fmt: skip
        too_big = [d for d in unmet if not self.fits_provider_node(d.vram_bytes, d.gpus)]
        if too_big and not self._too_big_told:
            assert self._shape is not None
            log.warning("%d request(s) wait for more than one of the provider's nodes has (%d GPU(s) of %s): no node "
                        "is started for them", len(too_big), self._shape[0], format_size(self._shape[1]))  # fmt: skip
        self._too_big_told = bool(too_big)
        unmet = [d for d in unmet if d not in too_big]
        self._waiting, self._unmet = len(demand), len(unmet)
        m.demand.set(len(demand))
        count = len(live) + len(starting)
        if count < self.config.min_nodes:
            await self._start(now, f"below the minimum of {self.config.min_nodes} node(s)", "min_nodes")
        elif unmet and not starting:
            if count < self.config.max_nodes:
                self._max_told = False
                await self._start(now, f"{len(unmet)} request(s) wait and no node has room", "demand")
            elif not self._max_told:
                self._max_told = True
                log.warning("%d request(s) wait for room, but the pool is at its maximum of %d node(s) "
                            "(--max-nodes)", len(unmet), self.config.max_nodes)  # fmt: skip
        if self.config.park_idle_s > 0:
            await self._idle_sessions(live)
        may_stop = not unmet and now - self._last_up >= self.config.scale_down_cooldown_s
        await self._scale_down(live, by_id, count, now, may_stop)

    async def _start(self, now: float, why: str, reason: str) -> None:
        timeline.mark("autoscaler.start_node", reason)
        try:
            node = await self.provider.start()
        except ProviderError as e:
            log.error("cannot start a node (%s): %s", why, e)
            self.last_action = f"start failed: {e}"
            return
        self._last_up = now
        if node.node_id:
            self._asked[node.node_id] = now
        self.service.metrics.scale_events.labels("start", reason).inc()
        self.last_action = f"started {node.node_id or 'a node'}: {why}"
        log.info("autoscaler: %s", self.last_action)

    async def _stop_late_starters(self, starting: list[ProviderNode], now: float) -> None:
        """Stops a node that runs (a process, a Running pod) but has not registered `start_timeout_s` after the
        provider was asked for it (or this autoscaler first saw it run). A pod still Pending waits for a machine:
        that is the cluster autoscaler's business."""
        running = {p.node_id for p in starting if p.node_id and p.state == ProviderState.running}
        for node_id in [n for n in self._unregistered if n not in running]:
            del self._unregistered[node_id]
        for node_id in running:
            since = self._unregistered.setdefault(node_id, self._asked.get(node_id, now))
            if now - since <= self.config.start_timeout_s:
                continue
            log.warning("node %s runs but did not register with the pool within %gs; stopping it (see its log)",
                        node_id, self.config.start_timeout_s)  # fmt: skip
            self._unregistered.pop(node_id, None)
            self._asked.pop(node_id, None)
            try:
                await self.provider.stop(node_id)
            except ProviderError as e:
                log.error("cannot stop node %s: %s", node_id, e)
            self.service.metrics.scale_events.labels("stop", "start_timeout").inc()

    async def _forget_stopped(self, nodes: list[NodeRecord], by_id: dict[str, ProviderNode]) -> None:
        for n in nodes:
            if n.node_id in self._stopped and n.state == NodeState.down and n.node_id not in by_id:
                if await self.store.forget_node(n.node_id):
                    self._stopped.discard(n.node_id)

    async def _idle_sessions(self, live: dict[str, NodeRecord]) -> None:
        """Pages out idle resident sessions and parks idle paged ones where their node can."""
        cfg = self.config
        now = time.monotonic()
        for node in live.values():
            if node.state == NodeState.down:
                continue
            for s in node.sessions:
                if s.idle_s < cfg.park_idle_s:
                    continue
                lease = await self.store.get_lease(s.lease_id)
                if lease is None or lease.qos == QoS.guaranteed:
                    continue  # guaranteed sessions are never paged or parked
                if s.state == "resident" and now - self._paged.get(s.session_id, -1e18) > cfg.park_idle_s:
                    self._paged[s.session_id] = now
                    with contextlib.suppress(PoolError):
                        await self.service.page_session(s.session_id, "page-out")
                elif s.state in PAGED_STATES:
                    why_not = ("the node server does not offer Park (no park store)" if "park" not in node.capabilities
                               else f"it cannot be parked: {s.park_blocker}" if s.park_blocker else "")  # fmt: skip
                    if why_not:
                        if s.session_id not in self._told:
                            self._told.add(s.session_id)
                            log.info("session %s on node %s is idle and paged; parking it is a no-op: %s, so the "
                                     "session stays paged and its node stays up", s.session_id, node.node_id,
                                     why_not)  # fmt: skip
                    elif now - self._parked.get(s.session_id, -1e18) > cfg.park_idle_s:
                        self._parked[s.session_id] = now
                        cmd = Command(_command_id(), "park", lease_id=s.lease_id, session_id=s.session_id)
                        await self.store.push_command(node.node_id, cmd)
                        log.info("asked node %s to park idle session %s", node.node_id, s.session_id)

    async def _scale_down(self, live: dict[str, NodeRecord], by_id: dict[str, ProviderNode], count: int,
                          now: float, may_stop: bool) -> None:  # fmt: skip
        """Keeps every node's idle timer; stops the longest-idle one past `node_idle_s` when `may_stop`."""
        idle: list[str] = []
        for node_id, node in live.items():
            p = by_id.get(node_id)
            busy = p is None or p.state == ProviderState.stopping or await self._busy(node)
            if busy:
                self._idle_since.pop(node_id, None)
                continue
            since = self._idle_since.setdefault(node_id, now)
            if now - since >= self.config.node_idle_s:
                idle.append(node_id)
        if not idle or not may_stop or count <= self.config.min_nodes:
            return
        node_id = min(idle, key=lambda n: self._idle_since[n])
        why = f"idle for {now - self._idle_since[node_id]:.0f}s (no lease, no session)"
        try:
            await self.service.drain_node(node_id, f"the autoscaler stops it: {why}")
        except PoolError as e:
            log.info("not stopping node %s: %s", node_id, e.reason)
            return
        await self.service.unbind_parked(node_id)  # parked leases leave with nothing on the node
        if await self.store.active_lease_ids_on(node_id):  # a lease landed between the look and the drain
            with contextlib.suppress(PoolError):
                await self.service.undrain_node(node_id)
            self._idle_since.pop(node_id, None)
            return
        try:
            await self.provider.stop(node_id)
        except ProviderError as e:
            log.error("cannot stop idle node %s: %s", node_id, e)
            return
        self._idle_since.pop(node_id, None)
        self._stopped.add(node_id)
        await self.store.mark_down(node_id, f"stopped by the autoscaler: {why}", None)
        if node_id not in {p.node_id for p in await self.provider.list()}:
            if await self.store.forget_node(node_id):
                self._stopped.discard(node_id)
        self.service.metrics.scale_events.labels("stop", "idle").inc()
        self.last_action = f"stopped {node_id}: {why}"
        log.info("autoscaler: %s", self.last_action)

    async def _busy(self, node: NodeRecord) -> bool:
        """A node is busy while it runs a session, or holds a lease whose sessions are not all parked."""
        if any(s.state != "parked" for s in node.sessions):
            return True
        for lease_id in await self.store.active_lease_ids_on(node.node_id):
            lease = await self.store.get_lease(lease_id)
            if lease is not None and lease.parked_ref is None:
                return True
        return False

    # --- views -------------------------------------------------------------------------------------------
    async def status(self) -> ScaleStatus:
        cfg = self.config
        provided = await self.provider.list()
        registered = {n.node_id: n for n in await self.store.list_nodes()}
        now = self.clock()
        nodes = []
        for p in provided:
            n = registered.get(p.node_id)
            state = p.state.value
            if p.state == ProviderState.running and (n is None or n.state == NodeState.down):
                state = ProviderState.starting.value  # running, not (yet) registered
            idle = now - self._idle_since[p.node_id] if p.node_id in self._idle_since else None
            nodes.append({"node_id": p.node_id, "provider_state": state, "pool_state": n.state.value if n else None,
                          "detail": p.detail, "idle_s": idle, "started_at": p.started_at or None})  # fmt: skip
        return ScaleStatus(self.provider.name, self.leader, cfg.min_nodes, cfg.max_nodes, cfg.node_idle_s,
                           cfg.park_idle_s, self._waiting, self._unmet, nodes, self.last_action)  # fmt: skip


def _command_id() -> str:
    import secrets

    return secrets.token_hex(6)
