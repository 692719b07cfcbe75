"""The pool service's nodes: registering, heartbeats (and what they say about leases), draining, paging commands
and the token checks nodes ask for.

Paging (see placement.py for overcommit): each lease carries its idle timeout (the request's, else the pool's
`default_idle_timeout_s`; 0: never) and QoS to its node with every token check, and the node pages its idle
sessions out by that policy. Operators page a session out or in by hand (`page_session`): the pool finds the
session's node in the nodes' last heartbeats and queues a command for it; the node reports the outcome in the
session's `page_command_id` / `page_result` with a later heartbeat."""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass

from fargpu import timeline
from fargpu.pool_manager.errors import BadRequest, Conflict, NotFound
from fargpu.pool_manager.models import GpuInfo, LeaseRecord, LeaseState, NodeRecord, NodeState, PageTarget, SessionInfo
from fargpu.pool_manager.service_parking import ParkingService
from fargpu.pool_manager.store import Command

log = logging.getLogger("fargpu.pool_manager")


@dataclass(frozen=True)
class PageCommand:
    """A page-out or page-in queued for a session's node."""

    command_id: str
    session_id: str
    node_id: str
    action: str  # "page-out" | "page-in"
    to: PageTarget | None  # page-out only


class NodeService(ParkingService):
    """Nodes: registering, heartbeats, draining, paging commands, token checks."""

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
