"""The pool service's shared ground: its configuration, the request types, and the state every part of it uses.

`ServiceCore` holds this process's own state (the wait queue, the leases waiting to move, what the last heartbeats
reported, the re-adoption window); the parts of `PoolService` (service.py) build on it in layers: tenants and keys
(service_tenants.py), leases and the wait queue (service_leases.py), parking and relocation (service_parking.py),
nodes and their commands (service_nodes.py)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fargpu.pool_manager.metrics import PoolMetrics
from fargpu.pool_manager.models import LeaseRecord, QoS
from fargpu.pool_manager.placement import Strategy
from fargpu.pool_manager.store import Store, TenantLimits


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


class ServiceCore:
    """The configuration, the clock, the store and this process's own state, shared by every layer."""

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
