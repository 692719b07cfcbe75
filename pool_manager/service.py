"""The pool's rules: leasing, renewing and ending leases, registering nodes, heartbeats, down-marking, queueing.

`PoolService` sits between the front doors (REST in `api.py`, gRPC in `grpc_service.py`) and the store. It
holds no pool state of its own, only this process's queue of waiting requests, so several pool managers can
serve one Redis store. Time comes from an injectable clock, and `sweep_once` is the whole periodic duty
(expiry, down-marking, clean-up), so tests drive time by hand.

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
elsewhere.

The parts: configuration and shared state in service_core.py, tenants and keys in service_tenants.py, leases and
the wait queue in service_leases.py, parking and relocation in service_parking.py, nodes in service_nodes.py; this
file adds the background loops, the periodic sweep and the listings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fargpu.pool_manager.models import LeaseState, NodeRecord, NodeState, PoolStatus, SessionInfo
from fargpu.pool_manager.service_nodes import NodeService
from fargpu.pool_manager.tenants import Principal

log = logging.getLogger("fargpu.pool_manager")


class PoolService(NodeService):
    """The whole pool service (see the layers above): adds its background loops, the sweep and the listings."""

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
