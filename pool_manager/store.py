"""The pool's state store: the one interface both stores implement, and the contract that keeps the pool honest.

Every operation that decides something is atomic inside the store, so that any number of pool managers can
share one store:
- `place_lease` books VRAM only if, at that instant, the node is up and each chosen GPU has `room_on` for it: a
  pageable request keeps the bookings within capacity x overcommit ratio (the node's own ratio, else the pool's)
  and fits the real memory beside the guaranteed bookings; a guaranteed request (never paged) keeps all bookings
  within the real memory. Placement itself (which node, which GPUs) is computed outside the
  store from a snapshot (`placement_view`); a stale snapshot can only make `place_lease` refuse, never
  over-book, and the caller retries with a fresh snapshot.
- `end_lease` ends an active lease exactly once and gives its VRAM back exactly once, however many pool managers
  race to end it (release, expiry, eviction, node loss).
- `mark_down` takes a node down only if it is still silent at that instant, so a heartbeat that lands on
  another pool manager in the meantime wins.
- `set_node_credential` replaces a node's credential hash only if the node is not live with one already, so an
  enrolment cannot take over a node that is up, however the calls interleave.
- `move_lease` moves a lease's bookings from one node to another (or to none, while its session is parked) in one
  step, under the same room rule as `place_lease`; `try_lock` gives a named lock to one owner at a time (the
  autoscaler's: exactly one pool manager scales).
- `place_lease` also keeps a tenant within its quota (`TenantLimits`: VRAM booked by its active leases, and
  how many it holds), in the same atomic step; a refusal for quota starts with `QUOTA_REFUSAL`.
Tenants and API keys live in the store too (keys as SHA-256 only). `ping` raises when the store cannot be used.
Implementations: `store_embedded.EmbeddedStore` (one process, persisted to a file) and
`store_redis.RedisStore` (Lua scripts on one Redis). `tests/python/pool/test_store.py` runs the same tests on
both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

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

QUOTA_REFUSAL = "quota: "


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's quota as `place_lease` enforces it (None: no limit)."""

    vram_bytes: int | None = None
    leases: int | None = None


def quota_refusal(tenant: str, limits: TenantLimits, vram_used: int, leases: int, want: int) -> str | None:
    """Why a lease booking `want` bytes would break `tenant`'s quota, or None (the Redis Lua says the same)."""
    if limits.leases is not None and leases + 1 > limits.leases:
        return f"{QUOTA_REFUSAL}tenant {tenant} holds {leases} of its {limits.leases} active leases"
    if limits.vram_bytes is not None and vram_used + want > limits.vram_bytes:
        return (f"{QUOTA_REFUSAL}tenant {tenant} has {vram_used} of its {limits.vram_bytes} VRAM bytes booked; "
                f"{want} more do not fit")  # fmt: skip
    return None


def bookable(capacity: int, ratio: float) -> int:
    """What leases may book on a GPU of `capacity` bytes at overcommit `ratio` (the Redis store's Lua computes
    the same floor of the same double product)."""
    return int(capacity * ratio)


def room_on(capacity: int, booked: int, guaranteed_booked: int, ratio: float, guaranteed: bool) -> int:
    """The largest lease a GPU can still take.

    A pageable lease (standard, best_effort): all bookings stay within capacity x ratio, and the lease fits the
    GPU's real memory beside the guaranteed bookings (its sessions must become resident to run, and guaranteed
    sessions never give way). A guaranteed lease: all bookings, its own included, fit the real memory (ratio 1).
    That is what keeps every lease runnable: a guaranteed lease never lands where the leases already there could
    no longer fit beside the guaranteed ones (the sum of the pageable bookings bounds the largest of them)."""
    if guaranteed:
        return capacity - booked
    return min(bookable(capacity, ratio) - booked, capacity - guaranteed_booked)


@dataclass(frozen=True)
class NodeCapacity:
    """What placement needs to know about a node: its state, endpoints, per-GPU capacity and bookings (all of
    them, and the guaranteed ones among them) and its own overcommit ratio (0: the pool's)."""

    node_id: str
    state: NodeState
    endpoints: list[str]
    capacity: dict[int, int]
    reserved: dict[int, int] = field(default_factory=dict)
    guaranteed: dict[int, int] = field(default_factory=dict)
    overcommit: float = 0.0
    last_heartbeat: float = 0.0  # 0: unknown (placement then does not judge the node by it)

    def ratio(self, pool_ratio: float = 1.0) -> float:
        return self.overcommit if self.overcommit > 0 else pool_ratio

    def free(self, gpu: int, pool_ratio: float = 1.0, qos: QoS = QoS.standard) -> int:
        """The largest lease of class `qos` that `gpu` can still take (see `room_on`)."""
        return room_on(
            self.capacity.get(gpu, 0),
            self.reserved.get(gpu, 0),
            self.guaranteed.get(gpu, 0),
            self.ratio(pool_ratio),
            qos == QoS.guaranteed,
        )


@dataclass(frozen=True)
class EndResult:
    lease: LeaseRecord | None  # None: no such lease
    ended_now: bool  # True only for the one call that ended it


@dataclass(frozen=True)
class Command:
    """A command for a node agent, queued in the store until the node's command stream takes it."""

    command_id: str
    kind: str  # "end_lease" | "drain" | "undrain" | "page_out" | "page_in" | "park"
    lease_id: str = ""
    reason: str = ""
    session_id: str = ""  # page_out, page_in, park
    to: str = ""  # page_out: "auto" | "host" | "disk"


class Store(Protocol):
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # --- nodes -------------------------------------------------------------------------------------------
    async def register_node(self, node: NodeRecord) -> NodeRecord:
        """Adds or refreshes a node (state up, heartbeat now). Bookings of its active leases are kept."""
        ...

    async def heartbeat(
        self, node_id: str, gpus: list[GpuInfo], sessions: list[SessionInfo], draining: bool, now: float
    ) -> bool:
        """Records telemetry; False if the node is unknown or down (it must register again)."""
        ...

    async def get_node(self, node_id: str) -> NodeRecord | None: ...

    async def list_nodes(self) -> list[NodeRecord]: ...

    async def placement_view(self) -> list[NodeCapacity]: ...

    async def set_draining(self, node_id: str, reason: str) -> NodeRecord | None:
        """Up -> draining (draining stays draining). Returns the node, or None if unknown. A down node is
        returned unchanged; the caller decides what that means."""
        ...

    async def set_undrained(self, node_id: str) -> NodeRecord | None:
        """Draining -> up (up stays up). Returns the node, or None if unknown. A down node is returned unchanged;
        the caller decides what that means."""
        ...

    async def mark_down(self, node_id: str, reason: str, stale_before: float | None) -> list[str] | None:
        """Takes an up/draining node down if its last heartbeat is older than `stale_before` (or always, when
        None). Returns the ids of its active leases if this call took it down, else None."""
        ...

    async def active_lease_ids_on(self, node_id: str) -> list[str]: ...

    # --- node credentials (see enrolment.py) -------------------------------------------------------------
    async def set_node_credential(self, node_id: str, sha256_hex: str) -> bool:
        """Stores the SHA-256 (hex) of the node's credential, replacing an older one, unless the node is live
        (registered and not down) and already has a credential: then nothing changes and the result is False."""
        ...

    async def node_credential(self, node_id: str) -> str | None:
        """The SHA-256 (hex) of the node's credential, or None if it never enrolled."""
        ...

    # --- leases ------------------------------------------------------------------------------------------
    async def place_lease(
        self, lease: LeaseRecord, overcommit: float = 1.0, limits: TenantLimits | None = None
    ) -> str | None:
        """Books the lease's allocations atomically, where each GPU has `room_on` for them at the node's own
        overcommit ratio, else at `overcommit` (the pool's), and `lease.tenant` stays within `limits`. Returns
        None on success, or why it could not (starting with QUOTA_REFUSAL when the quota said no)."""
        ...

    async def mark_sessions_seen(self, lease_id: str) -> None:
        """Notes that a node has reported a session of the lease (see LeaseRecord.end_with_sessions)."""
        ...

    async def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(VRAM bytes booked, active leases) of the tenant."""
        ...

    # --- tenants and API keys ----------------------------------------------------------------------------
    async def put_tenant(self, tenant: TenantRecord) -> None: ...

    async def get_tenant(self, name: str) -> TenantRecord | None: ...

    async def list_tenants(self) -> list[TenantRecord]: ...

    async def put_api_key(self, key: ApiKeyRecord) -> None: ...

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        """The live (not revoked) key with this hash."""
        ...

    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, key_id: str, now: float) -> ApiKeyRecord | None:
        """Revokes a key (its hash no longer authenticates). Returns it, or None if unknown."""
        ...

    async def ping(self) -> None:
        """Raises (ConnectionError, OSError or the store client's error) when the store cannot be used."""
        ...

    async def end_lease(self, lease_id: str, state: LeaseState, reason: str, now: float) -> EndResult: ...

    async def renew_lease(self, lease_id: str, expires_at: float) -> LeaseRecord | None:
        """Moves an active lease's expiry. Returns the lease (unchanged if it is no longer active), or None."""
        ...

    async def get_lease(self, lease_id: str) -> LeaseRecord | None: ...

    async def lease_by_token_hash(self, token_hash: str) -> LeaseRecord | None: ...

    async def list_leases(self, include_ended: bool = False) -> list[LeaseRecord]: ...

    async def expired_lease_ids(self, now: float) -> list[str]: ...

    async def next_expiry(self) -> float | None:
        """The earliest expiry among active leases."""
        ...

    async def purge_ended(self, before: float) -> int:
        """Forgets leases that ended before `before`; returns how many."""
        ...

    # --- node commands -----------------------------------------------------------------------------------
    async def push_command(self, node_id: str, command: Command) -> None: ...

    async def take_commands(self, node_id: str, timeout_s: float) -> list[Command]:
        """Pops the node's queued commands, waiting up to `timeout_s` for one if there is none."""
        ...

    # --- scaling (autoscaler.py) and moving leases -------------------------------------------------------
    async def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Takes the named lock for `owner`, or extends it if `owner` holds it already; False while another
        owner holds it. A lock its owner stops extending lapses after `ttl_s`."""
        ...

    async def unlock(self, name: str, owner: str) -> None:
        """Lets the lock go, if `owner` holds it."""
        ...

    async def put_demand(self, owner: str, payload: str, ttl_s: float) -> None:
        """Publishes what `owner` (a pool manager) waits for (JSON; "" clears it); it lapses after `ttl_s`."""
        ...

    async def demand(self) -> list[str]:
        """Every pool manager's published, unlapsed demand."""
        ...

    async def move_lease(self, lease: LeaseRecord, overcommit: float = 1.0) -> str | None:
        """Atomically rebinds an active lease to `lease.node_id` with `lease.allocs` (node "" with no allocs:
        bound to no node, e.g. parked) and stores the record as given (endpoints, parked_ref): its bookings on
        its old node are given back and its new ones booked under `place_lease`'s room rule. On the same node it
        only stores the record (bookings unchanged). Returns None on success, or why it could not (the lease is
        not active, the node is not up or has no room)."""
        ...

    async def forget_node(self, node_id: str) -> bool:
        """Removes a node that is down and has no active lease (a node its provider stopped); False otherwise."""
        ...
