"""What the node agent offers to the control plane (pool_link.py): its sessions (with their paging state), its
capacity, and the power to end a lease's sessions and to page a session out or in. Kept as a Protocol so the
pool-manager link is written against this, not the agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    lease_id: str
    pid: int  # the worker process serving the session
    vram_used_bytes: int
    client: str  # "host:pid" as the client reported it
    state: str = "resident"  # resident | paging-out | paged-host | paged-disk | paging-in
    resident_bytes: int = 0  # on the GPU now (allocations and created contexts)
    paged_bytes: int = 0  # in the node's host page pool or spill file
    idle_s: float = 0.0  # since its last call
    unpageable_bytes: int = 0  # what its last page-out could not free (module globals, created contexts)
    park_blocker: str = ""  # why it cannot be parked (empty: it can, or no park was tried)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    utilization_pct: float


class NodeAgentAPI(Protocol):
    backend: str  # "cuda" or "sim"
    endpoint: str  # what clients connect to, e.g. "tcp://10.0.0.5:7100"

    def sessions(self) -> list[SessionInfo]: ...

    def devices(self) -> list[DeviceInfo]:
        """The node's devices now. On a real GPU this reads NVML and blocks: on the event loop, use read_devices."""
        ...

    async def read_devices(self) -> list[DeviceInfo]:
        """What devices() returns, read without blocking the event loop (NVML on the node's NVML thread)."""
        ...

    async def end_lease(self, lease_id: str, reason: str) -> int:
        """Close every session of the lease (the client sees `reason`); returns how many were closed."""
        ...

    async def drain(self) -> None:
        """Accept no new sessions; existing ones run to completion."""
        ...

    async def undrain(self) -> None:
        """Accept new sessions again."""
        ...

    async def page_out(self, session_id: str, to: str = "auto") -> str:
        """Page the session's device memory out, `to` "auto" (host pool, then disk), "host" or "disk". Returns
        "paged host|disk BYTES NS UNPAGEABLE" or "failed REASON"; a failure leaves the session resident."""
        ...

    async def page_in(self, session_id: str) -> str:
        """Page the session's memory back in now. Returns "resident BYTES NS" or "failed REASON"."""
        ...

    async def park(self, session_id: str) -> str:
        """Park the session off the node (paged out first if it is resident): its state goes to the park store and
        its worker exits. Returns "parked KEY BYTES NS" or "failed REASON"; a failure leaves the session paged."""
        ...
