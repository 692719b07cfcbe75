"""The embedded store: the pool's state in this process, persisted to a file. The default on one machine.

Atomicity comes from asyncio itself: no method awaits inside its critical section, so each one runs to the end
before another starts. Only one pool manager may use a state file; an exclusive `flock` on `<file>.lock` makes a
second one fail at start instead of silently forking the state (use Redis for several pool managers).

Persistence follows Redis' append-only file: every change of a lease or a node registration is appended as one
JSON line to `<file>.journal` before the call returns, and the journal is folded into the snapshot `<file>`
(written to a temporary file and renamed) at start and every `compact_every` lines. A crash loses nothing that a
client was told about; `fsync=True` extends that to power loss. Heartbeat telemetry is not persisted: after a
restart every node gets a fresh heartbeat deadline. Node credentials, tenants and API keys (hashes only) are
persisted too.
Bookings are never persisted either; they are recomputed
from the active leases on load, so they cannot drift from them."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fargpu.pool_manager.models import (
    ApiKeyRecord,
    GpuInfo,
    LeaseRecord,
    LeaseState,
    NodeRecord,
    NodeState,
    QoS,
    SessionInfo,
    TenantRecord,
)
from fargpu.pool_manager.store import Command, EndResult, NodeCapacity, TenantLimits, quota_refusal, room_on

_UNPERSISTED = {"reserved", "guaranteed_reserved", "sessions"}  # recomputed on load, or telemetry


class StateFileInUse(RuntimeError):
    pass


class EmbeddedStore:
    name = "embedded"

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        fsync: bool = False,
        compact_every: int = 20000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._path = Path(path) if path is not None else None
        self._fsync = fsync
        self._compact_every = compact_every
        self._nodes: dict[str, NodeRecord] = {}
        self._leases: dict[str, LeaseRecord] = {}
        self._by_token: dict[str, str] = {}
        self._by_node: dict[str, set[str]] = {}
        self._caps: dict[str, dict[int, int]] = {}
        self._commands: dict[str, list[Command]] = {}
        self._credentials: dict[str, str] = {}  # node id -> SHA-256 (hex) of its credential
        self._command_ready: dict[str, asyncio.Event] = {}
        self._tenants: dict[str, TenantRecord] = {}
        self._keys: dict[str, ApiKeyRecord] = {}  # key id -> record
        self._key_by_hash: dict[str, str] = {}  # live keys only
        self._usage: dict[str, tuple[int, int]] = {}  # tenant -> (VRAM booked, active leases)
        self._journal: IO[str] | None = None
        self._journal_lines = 0
        self._lock_file: IO[str] | None = None
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (owner, until; monotonic)
        self._demand: dict[str, tuple[str, float]] = {}  # owner -> (payload, until; monotonic)

    # --- persistence -------------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._path is None:
            return
        self._lock_file = self._take_lock(self._path)
        self._load()
        self._compact()

    @staticmethod
    def _take_lock(path: Path) -> IO[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StateFileInUse(
                f"state file {path} is in use by another pool manager; "
                "use the Redis store to run several pool managers on one state"
            ) from None
        return lock

    async def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _journal_path(self) -> Path:
        assert self._path is not None
        return self._path.with_name(self._path.name + ".journal")

    def _load(self) -> None:
        assert self._path is not None
        if self._path.exists():
            snap = json.loads(self._path.read_text())
            for n in snap.get("nodes", []):
                self._apply({"node": n})
            for lease in snap.get("leases", []):
                self._apply({"lease": lease})
            for node_id, digest in snap.get("node_credentials", {}).items():
                self._apply({"node_credential": [node_id, digest]})
            for t in snap.get("tenants", []):
                self._apply({"tenant": t})
            for k in snap.get("api_keys", []):
                self._apply({"api_key": k})
        jp = self._journal_path()
        if jp.exists():
            for line in jp.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a crash mid-write: everything before it is intact
                self._apply(entry)
        self._rebuild_indexes()

    def _apply(self, entry: dict[str, Any]) -> None:
        if "node" in entry:
            node = NodeRecord.model_validate(entry["node"])
            self._nodes[node.node_id] = node
        elif "lease" in entry:
            lease = LeaseRecord.model_validate(entry["lease"])
            self._leases[lease.lease_id] = lease
        elif "forget_lease" in entry:
            self._leases.pop(entry["forget_lease"], None)
        elif "forget_node" in entry:
            self._nodes.pop(entry["forget_node"], None)
        elif "node_credential" in entry:
            node_id, digest = entry["node_credential"]
            self._credentials[str(node_id)] = str(digest)
        elif "tenant" in entry:
            t = TenantRecord.model_validate(entry["tenant"])
            self._tenants[t.name] = t
        elif "api_key" in entry:
            k = ApiKeyRecord.model_validate(entry["api_key"])
            self._keys[k.key_id] = k

    def _rebuild_indexes(self) -> None:
        now = self._clock()
        self._by_token = {lease.token_hash: lease.lease_id for lease in self._leases.values()}
        self._by_node = {}
        self._usage = {}
        self._key_by_hash = {k.key_hash: k.key_id for k in self._keys.values() if k.revoked_at is None}
        self._caps = {node.node_id: node.capacity() for node in self._nodes.values()}
        for node in self._nodes.values():
            node.reserved = {}
            node.guaranteed_reserved = {}
            node.sessions = []
            node.last_heartbeat = now  # a fresh deadline: telemetry is not persisted
        for lease in self._leases.values():
            if lease.state == LeaseState.active:
                self._book(lease, +1)

    def _compact(self) -> None:
        if self._path is None:
            return
        snap = {
            "version": 1,
            "nodes": [n.model_dump(mode="json", exclude=_UNPERSISTED) for n in self._nodes.values()],
            "leases": [lease.model_dump(mode="json") for lease in self._leases.values()],
            "node_credentials": dict(self._credentials),
            "tenants": [t.model_dump(mode="json") for t in self._tenants.values()],
            "api_keys": [k.model_dump(mode="json") for k in self._keys.values()],
        }
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(snap, f)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self._path)
        if self._journal is not None:
            self._journal.close()
        self._journal = open(self._journal_path(), "w")  # noqa: SIM115 - the journal stays open
        self._journal_lines = 0

    def _log(self, entry: dict[str, Any]) -> None:
        if self._journal is None:
            return
        self._journal.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._journal.flush()
        if self._fsync:
            os.fsync(self._journal.fileno())
        self._journal_lines += 1
        if self._journal_lines >= self._compact_every:
            self._compact()

    def _log_lease(self, lease: LeaseRecord) -> None:
        self._log({"lease": lease.model_dump(mode="json")})

    def _log_node(self, node: NodeRecord) -> None:
        self._log({"node": node.model_dump(mode="json", exclude=_UNPERSISTED)})

    # --- bookings ----------------------------------------------------------------------------------------
    def _book(self, lease: LeaseRecord, sign: int) -> None:
        vram, count = self._usage.get(lease.tenant, (0, 0))
        self._usage[lease.tenant] = (vram + sign * lease.quota_bytes, count + sign)
        if not lease.node_id:  # parked: bound to no node
            return
        node = self._nodes.get(lease.node_id)
        ids = self._by_node.setdefault(lease.node_id, set())
        if sign > 0:
            ids.add(lease.lease_id)
        else:
            ids.discard(lease.lease_id)
        if node is None:
            return
        books = [node.reserved, node.guaranteed_reserved] if lease.qos == QoS.guaranteed else [node.reserved]
        for a in lease.allocs:
            for book in books:
                book[a.gpu] = book.get(a.gpu, 0) + sign * a.vram_bytes
                if book[a.gpu] == 0:
                    del book[a.gpu]

    # --- nodes -------------------------------------------------------------------------------------------
    async def register_node(self, node: NodeRecord) -> NodeRecord:
        old = self._nodes.get(node.node_id)
        rec = node.model_copy(deep=True)
        rec.state = NodeState.up
        rec.state_reason = None
        rec.reserved = dict(old.reserved) if old is not None else {}
        rec.guaranteed_reserved = dict(old.guaranteed_reserved) if old is not None else {}
        self._nodes[rec.node_id] = rec
        self._caps[rec.node_id] = rec.capacity()
        self._log_node(rec)
        return rec.model_copy(deep=True)

    async def heartbeat(
        self, node_id: str, gpus: list[GpuInfo], sessions: list[SessionInfo], draining: bool, now: float
    ) -> bool:
        node = self._nodes.get(node_id)
        if node is None or node.state == NodeState.down:
            return False
        cap = self._caps[node_id]
        # Capacity is what the node registered; telemetry updates free VRAM and utilization only.
        node.gpus = [g.model_copy(update={"total_bytes": cap[g.index]}) for g in gpus if g.index in cap] or node.gpus
        node.sessions = list(sessions)
        node.last_heartbeat = now
        if draining and node.state == NodeState.up:
            node.state = NodeState.draining
            node.state_reason = "the node reported that it is draining"
            self._log_node(node)
        return True

    @staticmethod
    def _node_copy(node: NodeRecord) -> NodeRecord:
        # Shallow copies are safe: stored records' lists and GPU/session entries are replaced, never mutated.
        return node.model_copy(
            update={"reserved": dict(node.reserved), "guaranteed_reserved": dict(node.guaranteed_reserved)}
        )

    async def get_node(self, node_id: str) -> NodeRecord | None:
        node = self._nodes.get(node_id)
        return self._node_copy(node) if node is not None else None

    async def list_nodes(self) -> list[NodeRecord]:
        return [self._node_copy(n) for n in sorted(self._nodes.values(), key=lambda n: n.node_id)]

    async def placement_view(self) -> list[NodeCapacity]:
        return [
            NodeCapacity(
                n.node_id,
                n.state,
                n.endpoints,
                self._caps[n.node_id],
                dict(n.reserved),
                dict(n.guaranteed_reserved),
                n.overcommit,
                n.last_heartbeat,
            )
            for n in self._nodes.values()
        ]

    async def set_draining(self, node_id: str, reason: str) -> NodeRecord | None:
        node = self._nodes.get(node_id)
        if node is None:
            return None
        if node.state == NodeState.up:
            node.state = NodeState.draining
            node.state_reason = reason
            self._log_node(node)
        return node.model_copy(deep=True)

    async def set_undrained(self, node_id: str) -> NodeRecord | None:
        node = self._nodes.get(node_id)
        if node is None:
            return None
        if node.state == NodeState.draining:
            node.state = NodeState.up
            node.state_reason = None
            self._log_node(node)
        return node.model_copy(deep=True)

    async def mark_down(self, node_id: str, reason: str, stale_before: float | None) -> list[str] | None:
        node = self._nodes.get(node_id)
        if node is None or node.state == NodeState.down:
            return None
        if stale_before is not None and node.last_heartbeat >= stale_before:
            return None
        node.state = NodeState.down
        node.state_reason = reason
        node.sessions = []
        self._log_node(node)
        return sorted(self._by_node.get(node_id, set()))

    async def active_lease_ids_on(self, node_id: str) -> list[str]:
        return sorted(self._by_node.get(node_id, set()))

    # --- node credentials --------------------------------------------------------------------------------
    async def set_node_credential(self, node_id: str, sha256_hex: str) -> bool:
        node = self._nodes.get(node_id)
        if node is not None and node.state != NodeState.down and node_id in self._credentials:
            return False
        self._credentials[node_id] = sha256_hex
        self._log({"node_credential": [node_id, sha256_hex]})
        return True

    async def node_credential(self, node_id: str) -> str | None:
        return self._credentials.get(node_id)

    # --- leases ------------------------------------------------------------------------------------------
    def _room_refusal(self, lease: LeaseRecord, overcommit: float, guaranteed: bool, full: str) -> str | None:
        """Why lease's allocations do not fit on its node now (None: they do); `full` ends the no-room reason."""
        node = self._nodes.get(lease.node_id)
        if node is None:
            return f"node {lease.node_id} is unknown"
        if node.state != NodeState.up:
            return f"node {lease.node_id} is {node.state.value}"
        cap = self._caps[node.node_id]
        ratio = node.overcommit if node.overcommit > 0 else overcommit
        for a in lease.allocs:
            if a.gpu not in cap:
                return f"node {lease.node_id} has no GPU {a.gpu}"
            booked, held = node.reserved.get(a.gpu, 0), node.guaranteed_reserved.get(a.gpu, 0)
            if a.vram_bytes > room_on(cap[a.gpu], booked, held, ratio, guaranteed):
                return f"GPU {a.gpu} of node {lease.node_id} {full}"
        return None

    async def place_lease(
        self, lease: LeaseRecord, overcommit: float = 1.0, limits: TenantLimits | None = None
    ) -> str | None:
        if lease.lease_id in self._leases:
            return f"lease id {lease.lease_id} already exists"
        if limits is not None:
            vram, count = self._usage.get(lease.tenant, (0, 0))
            why = quota_refusal(lease.tenant, limits, vram, count, lease.quota_bytes)
            if why is not None:
                return why
        why = self._room_refusal(lease, overcommit, lease.qos == QoS.guaranteed, "no longer has room")
        if why is not None:
            return why
        rec = lease.model_copy()
        self._leases[rec.lease_id] = rec
        self._by_token[rec.token_hash] = rec.lease_id
        self._book(rec, +1)
        self._log_lease(rec)
        return None

    async def mark_sessions_seen(self, lease_id: str) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None and not lease.sessions_seen:
            lease.sessions_seen = True
            self._log_lease(lease)

    async def tenant_usage(self, tenant: str) -> tuple[int, int]:
        return self._usage.get(tenant, (0, 0))

    # --- tenants and API keys ----------------------------------------------------------------------------
    async def put_tenant(self, tenant: TenantRecord) -> None:
        self._tenants[tenant.name] = tenant.model_copy()
        self._log({"tenant": tenant.model_dump(mode="json")})

    async def get_tenant(self, name: str) -> TenantRecord | None:
        t = self._tenants.get(name)
        return t.model_copy() if t is not None else None

    async def list_tenants(self) -> list[TenantRecord]:
        return [t.model_copy() for _, t in sorted(self._tenants.items())]

    async def put_api_key(self, key: ApiKeyRecord) -> None:
        self._keys[key.key_id] = key.model_copy()
        if key.revoked_at is None:
            self._key_by_hash[key.key_hash] = key.key_id
        self._log({"api_key": key.model_dump(mode="json")})

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        key_id = self._key_by_hash.get(key_hash)
        k = self._keys.get(key_id) if key_id is not None else None
        return k.model_copy() if k is not None and k.revoked_at is None else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return [k.model_copy() for k in sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))]

    async def revoke_api_key(self, key_id: str, now: float) -> ApiKeyRecord | None:
        k = self._keys.get(key_id)
        if k is None:
            return None
        if k.revoked_at is None:
            k.revoked_at = now
            self._key_by_hash.pop(k.key_hash, None)
            self._log({"api_key": k.model_dump(mode="json")})
        return k.model_copy()

    async def ping(self) -> None:
        return None

    async def end_lease(self, lease_id: str, state: LeaseState, reason: str, now: float) -> EndResult:
        lease = self._leases.get(lease_id)
        if lease is None:
            return EndResult(None, False)
        if lease.state != LeaseState.active:
            return EndResult(lease.model_copy(), False)
        lease.state = state
        lease.end_reason = reason
        lease.ended_at = now
        self._book(lease, -1)
        self._log_lease(lease)
        return EndResult(lease.model_copy(), True)

    async def renew_lease(self, lease_id: str, expires_at: float) -> LeaseRecord | None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        if lease.state == LeaseState.active:
            lease.expires_at = expires_at
            self._log_lease(lease)
        return lease.model_copy()

    async def get_lease(self, lease_id: str) -> LeaseRecord | None:
        lease = self._leases.get(lease_id)
        return lease.model_copy() if lease is not None else None

    async def lease_by_token_hash(self, token_hash: str) -> LeaseRecord | None:
        lease_id = self._by_token.get(token_hash)
        return await self.get_lease(lease_id) if lease_id is not None else None

    async def list_leases(self, include_ended: bool = False) -> list[LeaseRecord]:
        return [
            lease.model_copy()
            for lease in sorted(self._leases.values(), key=lambda x: (x.created_at, x.lease_id))
            if include_ended or lease.state == LeaseState.active
        ]

    async def expired_lease_ids(self, now: float) -> list[str]:
        return sorted(
            lease.lease_id
            for lease in self._leases.values()
            if lease.state == LeaseState.active and lease.expires_at <= now
        )

    async def next_expiry(self) -> float | None:
        active = [lease.expires_at for lease in self._leases.values() if lease.state == LeaseState.active]
        return min(active) if active else None

    async def purge_ended(self, before: float) -> int:
        gone = [
            lease
            for lease in self._leases.values()
            if lease.state != LeaseState.active and lease.ended_at is not None and lease.ended_at < before
        ]
        for lease in gone:
            del self._leases[lease.lease_id]
            self._by_token.pop(lease.token_hash, None)
            self._log({"forget_lease": lease.lease_id})
        return len(gone)

    # --- node commands -----------------------------------------------------------------------------------
    def _ready(self, node_id: str) -> asyncio.Event:
        return self._command_ready.setdefault(node_id, asyncio.Event())

    async def push_command(self, node_id: str, command: Command) -> None:
        self._commands.setdefault(node_id, []).append(command)
        self._ready(node_id).set()

    async def take_commands(self, node_id: str, timeout_s: float) -> list[Command]:
        ready = self._ready(node_id)
        if not self._commands.get(node_id):
            ready.clear()
            try:
                await asyncio.wait_for(ready.wait(), timeout_s)
            except TimeoutError:
                return []
        return self._commands.pop(node_id, [])

    # --- scaling and moving leases -----------------------------------------------------------------------
    # Locks and demand live in this process only: one pool manager owns an embedded store (the state file's
    # flock), so they only order this process's own scalers.
    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        holder = self._locks.get(name)
        if holder is not None and holder[0] != owner and holder[1] > now:
            return False
        self._locks[name] = (owner, now + ttl_s)
        return True

    async def unlock(self, name: str, owner: str) -> None:
        if self._locks.get(name, ("", 0.0))[0] == owner:
            del self._locks[name]

    async def put_demand(self, owner: str, payload: str, ttl_s: float) -> None:
        if payload:
            self._demand[owner] = (payload, time.monotonic() + ttl_s)
        else:
            self._demand.pop(owner, None)

    async def demand(self) -> list[str]:
        now = time.monotonic()
        return [payload for payload, until in self._demand.values() if until > now]

    async def move_lease(self, lease: LeaseRecord, overcommit: float = 1.0) -> str | None:
        old = self._leases.get(lease.lease_id)
        if old is None:
            return f"lease {lease.lease_id} is unknown"
        if old.state != LeaseState.active:
            return f"lease {lease.lease_id} has ended ({old.state.value})"
        keep = {"state": old.state, "expires_at": old.expires_at, "qos": old.qos, "token_hash": old.token_hash}
        if lease.node_id == old.node_id:  # the record only; bookings stay as they are
            rec = lease.model_copy(update=keep | {"allocs": old.allocs})
            self._leases[rec.lease_id] = rec
            self._log_lease(rec)
            return None
        if lease.node_id:
            why = self._room_refusal(lease, overcommit, old.qos == QoS.guaranteed, "has no room")
            if why is not None:
                return why
        self._book(old, -1)
        rec = lease.model_copy(update=keep)
        self._leases[rec.lease_id] = rec
        self._book(rec, +1)
        self._log_lease(rec)
        return None

    async def forget_node(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        if node is None or node.state != NodeState.down or self._by_node.get(node_id):
            return False
        del self._nodes[node_id]
        self._caps.pop(node_id, None)
        self._by_node.pop(node_id, None)
        self._log({"forget_node": node_id})
        return True
