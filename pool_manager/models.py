"""The pool's records: leases, nodes, GPUs and sessions, as stored and as served over REST.

Records are pydantic models so that the stores persist them as JSON and FastAPI documents them in OpenAPI from
one definition. A lease's secret token is never part of a record: the store keeps only its hash
(`LeaseRecord.token_hash`), and `LeaseView` (what REST shows) leaves even that out. Tenants and their API keys
(`TenantRecord`, `ApiKeyRecord`) are records too; an API key is stored as its SHA-256 only (see `tenants.py`)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class QoS(StrEnum):
    """Quality-of-service class. It orders the wait queue (guaranteed before standard before best_effort) and says
    whether a node may page the lease's sessions out: `guaranteed` never (so a guaranteed lease is placed only
    where all bookings, its own included, fit the GPU's real memory: no overcommit), `standard` after its idle
    timeout or under memory pressure, `best_effort` first."""

    guaranteed = "guaranteed"
    standard = "standard"
    best_effort = "best_effort"

    @property
    def priority(self) -> int:
        return {"guaranteed": 0, "standard": 1, "best_effort": 2}[self.value]


class LeaseState(StrEnum):
    active = "active"
    released = "released"  # the owner released it
    expired = "expired"  # its TTL ran out without renewal
    evicted = "evicted"  # an operator evicted it
    lost = "lost"  # its node stopped heartbeating and was marked down


class NodeState(StrEnum):
    up = "up"
    draining = "draining"  # takes no new leases; existing ones run on
    down = "down"  # missed heartbeats; its leases were ended


class PageTarget(StrEnum):
    """Where a page-out puts a session's memory: the node's host page pool, a spill file, or the pool first; `deep`
    also moves what the VMM route leaves on the GPU (context, module code, globals) into the driver's process
    checkpoint (real GPUs only)."""

    auto = "auto"
    host = "host"
    disk = "disk"
    deep = "deep"


class GpuAlloc(BaseModel):
    gpu: int = Field(description="GPU index on the node")
    vram_bytes: int = Field(description="VRAM reserved on that GPU")


class LeaseRecord(BaseModel):
    lease_id: str
    token_hash: str
    node_id: str
    endpoints: list[str]
    allocs: list[GpuAlloc]
    vram_bytes: int  # per GPU
    gpu_count: int
    qos: QoS
    ttl_s: float
    idle_timeout_s: float | None = None  # None (leases stored before it existed): the pool's default
    label: str | None = None
    tenant: str = ""  # who owns it ("" : leases stored before tenants existed, visible to admins only)
    end_with_sessions: bool = False  # ends when its last session on the node ends (the stub's own leases)
    sessions_seen: bool = False  # a node has reported a session of it (end_with_sessions waits for that)
    created_at: float
    expires_at: float
    parked_ref: str | None = None  # where its session's parked state is; node_id is "" while parked
    moves: int = 0  # how often it moved to another node (relocate)
    state: LeaseState = LeaseState.active
    ended_at: float | None = None
    end_reason: str | None = None

    @property
    def quota_bytes(self) -> int:
        """What the node lets the lease's sessions allocate in all."""
        return sum(a.vram_bytes for a in self.allocs)

    def view(self) -> LeaseView:
        return LeaseView(**self.model_dump(exclude={"token_hash", "sessions_seen"}))


class LeaseView(BaseModel):
    """A lease as the REST API shows it (no token, no token hash)."""

    lease_id: str
    node_id: str
    endpoints: list[str]
    allocs: list[GpuAlloc]
    vram_bytes: int = Field(description="VRAM per GPU, bytes")
    gpu_count: int
    qos: QoS
    ttl_s: float
    idle_timeout_s: float | None = Field(
        None, description="seconds a session may sit idle before its node pages it out (0: never); null: pool default"
    )
    label: str | None
    tenant: str = Field("", description="the tenant that owns the lease")
    end_with_sessions: bool = Field(False, description="the lease ends when its last session ends")
    created_at: float
    expires_at: float
    parked_ref: str | None = Field(
        None,
        description="where its session's parked state is (node_id is empty while "
        "parked); the session resumes on whichever node the pool picks",
    )
    moves: int = Field(0, description="how often the lease moved to another node")
    state: LeaseState
    ended_at: float | None
    end_reason: str | None = Field(description="why the lease ended, readable by the client")


class LeaseCreated(LeaseView):
    token: str = Field(description="secret; present it to the node server and to renew/release. Shown once.")


class GpuInfo(BaseModel):
    index: int
    name: str = ""
    uuid: str = ""
    total_bytes: int
    free_bytes: int
    utilization_pct: float = 0.0


class SessionInfo(BaseModel):
    """A session as its node last reported it (every heartbeat)."""

    session_id: str
    lease_id: str
    node_id: str
    pid: int
    vram_used_bytes: int
    client: str
    state: str = Field("resident", description="resident | paging-out | paged-host | paged-disk | paging-in")
    resident_bytes: int = Field(0, description="device memory on the GPU now")
    paged_bytes: int = Field(0, description="device memory paged out to the node's host RAM or disk")
    idle_s: float = Field(0.0, description="seconds since the session's last call, when its node reported it")
    page_command_id: str | None = Field(None, description="the last page-out/page-in command the node finished")
    page_result: str | None = Field(None, description='its outcome, e.g. "paged host BYTES NS UNPAGEABLE", "failed …"')
    unpageable_bytes: int = Field(0, description="what its last page-out could not free (module globals, created "
                                  "contexts; context and module code are not counted)")
    park_blocker: str = Field("", description="why the session cannot be parked (it stays paged on its node); empty: "
                              "it can, or no park was tried")


class NodeRecord(BaseModel):
    node_id: str
    endpoints: list[str]
    backend: str
    version: str = ""
    gpus: list[GpuInfo]
    sessions: list[SessionInfo] = Field(default_factory=list)
    state: NodeState = NodeState.up
    state_reason: str | None = None
    registered_at: float
    last_heartbeat: float
    reserved: dict[int, int] = Field(default_factory=dict, description="VRAM booked by active leases, per GPU index")
    guaranteed_reserved: dict[int, int] = Field(
        default_factory=dict, description="the part of `reserved` booked by guaranteed leases (never paged)"
    )
    overcommit: float = Field(0.0, description="the node's own overcommit ratio; 0: the pool's")
    capabilities: list[str] = Field(
        default_factory=list,
        description="what the node server offers beyond the "
        'basics, e.g. "park" (it carries out Park and Restore commands)',
    )

    def capacity(self) -> dict[int, int]:
        return {g.index: g.total_bytes for g in self.gpus}

    @property
    def resident_bytes(self) -> int:
        """Device memory its sessions hold on the GPUs, by the node's own accounting (the last heartbeat)."""
        return sum(s.resident_bytes for s in self.sessions)

    @property
    def paged_bytes(self) -> int:
        """Device memory of its sessions paged out to the node's host RAM or disk (the last heartbeat)."""
        return sum(s.paged_bytes for s in self.sessions)

    @property
    def vram_total_bytes(self) -> int:
        return sum(g.total_bytes for g in self.gpus)

    @property
    def vram_reserved_bytes(self) -> int:
        return sum(self.reserved.values())

    @property
    def vram_used_bytes(self) -> int:
        """In use on the GPUs by the node's own telemetry (total minus free)."""
        return sum(max(0, g.total_bytes - g.free_bytes) for g in self.gpus)


class PoolStatus(BaseModel):
    nodes_up: int
    nodes_draining: int
    nodes_down: int
    gpus: int
    vram_total_bytes: int
    vram_reserved_bytes: int
    vram_used_bytes: int
    leases_active: int
    sessions: int
    store: str


class TenantRecord(BaseModel):
    """A tenant: who owns leases, with its own quota. None: no limit beyond the pool's capacity."""

    name: str
    vram_quota_bytes: int | None = Field(None, description="VRAM all its active leases may book together")
    max_leases: int | None = Field(None, description="active leases it may hold at once")
    created_at: float = 0.0
    disabled: bool = Field(False, description="a disabled tenant's keys are refused")


class ApiKeyRecord(BaseModel):
    """An API key as the store keeps it: its SHA-256, never the key."""

    key_id: str
    tenant: str = Field(description="the tenant it acts for; admin keys act for every tenant")
    key_hash: str
    admin: bool = False
    label: str | None = None
    created_at: float = 0.0
    revoked_at: float | None = None

    def view(self) -> ApiKeyView:
        return ApiKeyView(**self.model_dump(exclude={"key_hash"}))


class ApiKeyView(BaseModel):
    key_id: str
    tenant: str
    admin: bool
    label: str | None
    created_at: float
    revoked_at: float | None


class ApiKeyCreated(ApiKeyView):
    key: str = Field(description="the secret; shown once, kept nowhere but by its holder")
