"""The node provider interface: what the autoscaler asks of whatever runs GPU nodes (processes here, pods on
Kubernetes). A provider lists, starts and stops node servers and nothing else: it never places work, and it
never adds machines (on Kubernetes the cluster autoscaler or Karpenter does that when a node pod cannot be
scheduled). The node servers it starts register with the pool by themselves, under the node id the provider
gave them, which is how the autoscaler joins a provider's view to the pool's."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ProviderState(StrEnum):
    """A node as its provider sees it. `starting`: asked for, not (yet) running (a pod waiting for a machine, or
    a process that has not registered with the pool); `running`; `stopping`: asked to go, not gone yet."""

    starting = "starting"
    running = "running"
    stopping = "stopping"


@dataclass(frozen=True)
class ProviderNode:
    node_id: str  # the id the node server registers with the pool under
    state: ProviderState
    started_at: float = 0.0  # unix time the provider started it (0: unknown)
    detail: str = ""  # e.g. "pid 1234", "pod fargpu-node-abc on gpu-7 (Pending: Unschedulable)"


class ProviderError(RuntimeError):
    """A provider could not do what it was asked; the message says what happened and what to do."""


class NodeProvider(Protocol):
    name: str

    async def list(self) -> list[ProviderNode]:
        """Every node this provider runs or is starting or stopping."""
        ...

    async def start(self) -> ProviderNode:
        """Asks for one more node; returns it (usually `starting`). Raises ProviderError."""
        ...

    async def stop(self, node_id: str) -> None:
        """Stops that node (the pool drained it first). Unknown or gone: nothing to do. Raises ProviderError."""
        ...

    async def close(self) -> None:
        """Lets go of the provider's resources (the local provider stops the node servers it started)."""
        ...
