"""Placement: which node and which GPUs a lease gets. A pure function of a snapshot of the pool.

All of a lease's GPUs are on one node (one client connection reaches one node server). Free VRAM means
bookable capacity minus what active leases booked, not the node's instantaneous free memory: bookings are what
the pool promised, and the node enforces each lease's quota.

Overcommit: a GPU's bookable capacity is its memory x the overcommit ratio (the node's own, sent at
registration, else the pool's; 1 by default). Nodes page idle sessions out to make room, so what must fit the
real memory is only the resident set, which the node accounts for. Guaranteed leases are never paged, so two
rules keep every lease runnable: a guaranteed lease is placed as if there were no overcommit (all bookings on
the GPU, its own included, fit the real memory: ratio 1), and a standard or best-effort lease must fit the real
memory beside the GPU's guaranteed bookings. Together they mean the guaranteed bookings on a GPU always fit its
real memory, and every pageable lease can become resident beside them. The rule is `store.room_on`, which the
stores apply atomically.

- pack (default): best fit. Take the GPUs whose free VRAM is the smallest that still fits, and prefer the
  node with the least free VRAM. Busy nodes fill up, idle nodes stay idle (and can be scaled to zero), and big
  holes stay available for big requests.
- spread: the opposite. Take the GPUs with the most free VRAM on the node with the most free VRAM, so load and
  failures spread over nodes.
Ties break on node id so that placement is deterministic. One placement at a time per pool manager; across
pool managers the store arbitrates, and a manager that lost a race retries among the few best choices at
random instead of colliding again on the single best one."""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from fargpu.pool_manager.models import NodeState, QoS
from fargpu.pool_manager.store import NodeCapacity
from fargpu.pool_manager.units import format_size


class Strategy(StrEnum):
    pack = "pack"
    spread = "spread"


@dataclass(frozen=True)
class Placement:
    node_id: str
    endpoints: list[str]
    gpus: list[int]


def place(
    view: Sequence[NodeCapacity],
    vram_bytes: int,
    gpu_count: int,
    strategy: Strategy,
    rng: random.Random | None = None,
    among: int = 1,
    *,
    qos: QoS = QoS.standard,
    overcommit: float = 1.0,
) -> Placement | None:
    """The best placement, or with `rng` one of the `among` best at random: a pool manager whose first choice
    was taken by another one (a stale snapshot) retries that way, so that racing managers stop colliding.
    `overcommit` is the pool's ratio (a node's own one wins); `qos` guaranteed adds the real-memory rule."""
    ranked: list[tuple[tuple[int | str, ...], Placement]] = []
    for node in view:
        if node.state != NodeState.up or len(node.capacity) < gpu_count:
            continue
        free = {g: node.free(g, overcommit, qos) for g in node.capacity}
        fitting = [g for g, f in free.items() if f >= vram_bytes]
        if len(fitting) < gpu_count:
            continue
        node_free = sum(free.values())
        if strategy == Strategy.pack:
            chosen = sorted(fitting, key=lambda g: (free[g], g))[:gpu_count]
            leftover = sum(free[g] for g in chosen) - vram_bytes * gpu_count
            score: tuple[int | str, ...] = (leftover, node_free, node.node_id)
        else:
            chosen = sorted(fitting, key=lambda g: (-free[g], g))[:gpu_count]
            score = (-node_free, -sum(free[g] for g in chosen), node.node_id)
        ranked.append((score, Placement(node.node_id, node.endpoints, sorted(chosen))))
    if not ranked:
        return None
    if rng is None or among <= 1:
        return min(ranked, key=lambda r: r[0])[1]
    return rng.choice(heapq.nsmallest(among, ranked, key=lambda r: r[0]))[1]


def why_not(
    view: Sequence[NodeCapacity],
    vram_bytes: int,
    gpu_count: int,
    *,
    qos: QoS = QoS.standard,
    overcommit: float = 1.0,
) -> str:
    """A readable reason why `place` found nothing."""
    want = f"{gpu_count} GPU(s) with {format_size(vram_bytes)} each"
    up = [n for n in view if n.state == NodeState.up]
    if not up:
        others = len(view)
        return f"no node is up to place {want}" + (f" ({others} node(s) down or draining)" if others else "")
    if not any(len(n.capacity) >= gpu_count for n in up):
        return (f"no node up has {gpu_count} GPUs (the most on one node is {max(len(n.capacity) for n in up)}): "
                "a lease's GPUs must all be on one node (sessions do not span nodes); ask for fewer GPUs per lease")
    largest = max(c for n in up for c in n.capacity.values())
    if largest < vram_bytes:
        return f"no GPU in the pool has {format_size(vram_bytes)} (the largest has {format_size(largest)})"
    most_free = max(0, max(n.free(g, overcommit, qos) for n in up for g in n.capacity))
    if qos == QoS.guaranteed and place(up, vram_bytes, gpu_count, Strategy.pack, overcommit=overcommit):
        return (
            f"no node has room for a guaranteed lease of {want}: guaranteed sessions are never paged out, so a "
            f"guaranteed lease goes only where all bookings, its own included, fit a GPU's real memory, whatever "
            f"the overcommit ratio (the most a guaranteed lease can get on one GPU now is {format_size(most_free)})"
        )
    return f"the pool is full: no node has {want} free now (the most free on one GPU is {format_size(most_free)})"
