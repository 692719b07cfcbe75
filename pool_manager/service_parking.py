"""The pool service's leases that outlive their node: parking (a lease whose sessions are all parked), unbinding
parked leases from a node that goes, resuming them elsewhere, and moving a lease to another node (relocation)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from fargpu.pool_manager.errors import Conflict, NoCapacity
from fargpu.pool_manager.models import GpuAlloc, LeaseRecord, LeaseState, SessionInfo
from fargpu.pool_manager.placement import place, why_not
from fargpu.pool_manager.service_leases import LeaseService
from fargpu.pool_manager.store import Command

log = logging.getLogger("fargpu.pool_manager")


class ParkingService(LeaseService):
    """Parked leases, resuming them, and moving leases between nodes."""

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
