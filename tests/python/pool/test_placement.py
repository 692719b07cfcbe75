"""Placement and sizes: best-fit packing, spreading, readable refusals, and (property-based) that a placement
only ever uses GPUs of an up node with room, and finds one whenever one exists."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fargpu.pool_manager.models import NodeState
from fargpu.pool_manager.placement import Strategy, place, why_not
from fargpu.pool_manager.store import NodeCapacity
from fargpu.pool_manager.units import format_size, parse_size

G = 1 << 30


def cap(node_id: str, free: list[int], total: int = 80, state: NodeState = NodeState.up) -> NodeCapacity:
    return NodeCapacity(
        node_id, state, [f"tcp://{node_id}:1"], {i: total * G for i in range(len(free))},
        {i: (total - f) * G for i, f in enumerate(free)},
    )  # fmt: skip


def test_pack_is_best_fit_and_spread_is_worst_fit() -> None:
    view = [cap("a", [30, 70]), cap("b", [12, 80]), cap("c", [80, 80])]
    p = place(view, 10 * G, 1, Strategy.pack)
    assert p is not None and (p.node_id, p.gpus) == ("b", [0])  # the tightest hole that fits
    p = place(view, 20 * G, 1, Strategy.pack)
    assert p is not None and (p.node_id, p.gpus) == ("a", [0])
    p = place(view, 10 * G, 2, Strategy.pack)
    assert p is not None and (p.node_id, p.gpus) == ("b", [0, 1])  # leftover 2 + 70 beats 20 + 60
    p = place(view, 10 * G, 1, Strategy.spread)
    assert p is not None and p.node_id == "c"
    assert place(view, 81 * G, 1, Strategy.pack) is None


def test_only_up_nodes() -> None:
    view = [cap("a", [80], state=NodeState.draining), cap("b", [80], state=NodeState.down)]
    assert place(view, G, 1, Strategy.pack) is None
    assert "no node is up" in why_not(view, G, 1) and "2 node(s) down or draining" in why_not(view, G, 1)


def test_why_not() -> None:
    view = [cap("a", [5, 7], total=24)]
    assert "no node up has 3 GPUs" in why_not(view, G, 3)
    assert "no GPU in the pool has 32.0 GiB (the largest has 24.0 GiB)" in why_not(view, 32 * G, 1)
    assert "the pool is full" in why_not(view, 8 * G, 1) and "7.0 GiB" in why_not(view, 8 * G, 1)


@settings(max_examples=200, deadline=None)
@given(
    frees=st.lists(st.lists(st.integers(0, 80), min_size=1, max_size=4), min_size=1, max_size=6),
    down=st.sets(st.integers(0, 5)),
    want=st.integers(1, 80),
    count=st.integers(1, 4),
    strategy=st.sampled_from(list(Strategy)),
)
def test_placement_is_sound_and_complete(
    frees: list[list[int]], down: set[int], want: int, count: int, strategy: Strategy
) -> None:
    view = [cap(f"n{i}", f, state=NodeState.down if i in down else NodeState.up) for i, f in enumerate(frees)]
    p = place(view, want * G, count, strategy)
    feasible = any(
        n.state == NodeState.up and sum(1 for g in n.capacity if n.free(g) >= want * G) >= count for n in view
    )
    assert (p is not None) == feasible
    if p is not None:
        node = next(n for n in view if n.node_id == p.node_id)
        assert node.state == NodeState.up and len(set(p.gpus)) == count
        assert all(node.free(g) >= want * G for g in p.gpus)


def test_sizes() -> None:
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * G
    assert parse_size("512M") == 512 << 20 and parse_size("1.5G") == 3 * G // 2 and parse_size("4096") == 4096
    for bad in ("", "G", "8X", "-1G", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(8 * G) == "8.0 GiB" and format_size(100) == "100 B"
