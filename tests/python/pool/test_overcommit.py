"""Overcommit: placement books a GPU up to its memory x the overcommit ratio (the node's own, else the pool's),
one lease never exceeds a GPU's real memory, and guaranteed leases (never paged) are placed only where the
guaranteed bookings fit the real memory. Checked on the pure placement function (with a property), through the
service, and on the stores' atomic booking, on the embedded store and on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import FakeClock, GiB, StoreKit, gpus
from hypothesis import given, settings
from hypothesis import strategies as st

from fargpu.pool_manager.errors import BadRequest, NoCapacity
from fargpu.pool_manager.models import GpuAlloc, LeaseRecord, LeaseState, NodeState, QoS
from fargpu.pool_manager.placement import Strategy, place, why_not
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest, ServiceConfig
from fargpu.pool_manager.store import NodeCapacity, Store

G = GiB


@pytest.fixture
async def overcommitted(store: Store, clock: FakeClock) -> AsyncIterator[PoolService]:
    """A pool whose default ratio is 2.0."""
    svc = PoolService(store, ServiceConfig(overcommit_ratio=2.0), clock=clock)
    await svc.start(background=False)
    yield svc
    await svc.stop()


def quarter_gib_multiples(n: int) -> int:
    return n * G // 4


async def test_ratio_two_takes_two_leases_of_three_quarters_and_refuses_guaranteed(overcommitted: PoolService) -> None:
    svc = overcommitted
    await svc.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))
    a, _ = await svc.create_lease(LeaseRequest(vram_bytes=12 * G))
    b, _ = await svc.create_lease(LeaseRequest(vram_bytes=12 * G, qos=QoS.best_effort))
    assert a.node_id == b.node_id == "n1"  # 24 GiB booked on 16 GiB: the node pages idle sessions to make room
    node = await svc.get_node("n1")
    assert node.reserved == {0: 24 * G} and node.guaranteed_reserved == {}
    with pytest.raises(NoCapacity, match="guaranteed sessions are never paged out"):
        await svc.create_lease(LeaseRequest(vram_bytes=4 * G, qos=QoS.guaranteed))  # no overcommit for them
    with pytest.raises(NoCapacity, match="the pool is full"):
        await svc.create_lease(LeaseRequest(vram_bytes=12 * G))  # 36 > 32 GiB bookable
    c, _ = await svc.create_lease(LeaseRequest(vram_bytes=8 * G))  # exactly 32 GiB: the ratio's limit
    assert c.node_id == "n1"
    for lease in (a, b, c):
        await svc.release_lease(lease.lease_id)
    g, _ = await svc.create_lease(LeaseRequest(vram_bytes=12 * G, qos=QoS.guaranteed))  # nothing overcommitted now
    assert g.node_id == "n1" and (await svc.get_node("n1")).guaranteed_reserved == {0: 12 * G}


async def test_without_overcommit_the_second_lease_is_refused(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))
    await service.create_lease(LeaseRequest(vram_bytes=12 * G))
    with pytest.raises(NoCapacity, match="the pool is full"):
        await service.create_lease(LeaseRequest(vram_bytes=12 * G))


async def test_every_lease_fits_beside_the_guaranteed_ones(overcommitted: PoolService) -> None:
    """Guaranteed leases are placed without overcommit, and a pageable lease only where it fits the real memory
    beside the guaranteed bookings: whatever is paged, each lease can become resident."""
    svc = overcommitted
    await svc.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))
    s1, _ = await svc.create_lease(LeaseRequest(vram_bytes=6 * G))
    g1, _ = await svc.create_lease(LeaseRequest(vram_bytes=10 * G, qos=QoS.guaranteed))  # 16 of 16: fits
    with pytest.raises(NoCapacity, match="the most free on one GPU is 6.0 GiB"):
        await svc.create_lease(LeaseRequest(vram_bytes=8 * G))  # 24 <= 32 bookable, but 10 + 8 > 16 real
    s2, _ = await svc.create_lease(LeaseRequest(vram_bytes=6 * G))  # 22 GiB booked: overcommitted now
    with pytest.raises(NoCapacity, match="guaranteed"):
        await svc.create_lease(LeaseRequest(vram_bytes=G // 2, qos=QoS.guaranteed))
    assert (await svc.get_node("n1")).guaranteed_reserved == {0: 10 * G}
    await svc.evict_lease(g1.lease_id)  # ending a guaranteed lease gives its guaranteed booking back, once
    node = await svc.get_node("n1")
    assert node.guaranteed_reserved == {} and node.reserved == {0: 12 * G}
    with pytest.raises(NoCapacity, match="guaranteed"):
        await svc.create_lease(LeaseRequest(vram_bytes=6 * G, qos=QoS.guaranteed))  # 12 + 6 > 16
    await svc.evict_lease(s1.lease_id)
    g2, _ = await svc.create_lease(LeaseRequest(vram_bytes=10 * G, qos=QoS.guaranteed))
    assert g2.node_id == "n1" and (await svc.get_node("n1")).reserved == {0: 16 * G}
    assert {s2.lease_id, g2.lease_id} == {lease.lease_id for lease in await svc.list_leases()}


async def test_a_lease_never_exceeds_a_gpus_real_memory(overcommitted: PoolService) -> None:
    await overcommitted.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))
    with pytest.raises(NoCapacity, match="no GPU in the pool has 20.0 GiB"):
        await overcommitted.create_lease(LeaseRequest(vram_bytes=20 * G))  # 20 <= 32 bookable, > 16 real


async def test_a_nodes_own_ratio_wins_over_the_pools(service: PoolService) -> None:
    await service.register_node("tight", ["tcp://t:7100"], "sim", "", gpus(16))
    await service.register_node("loose", ["tcp://l:7100"], "sim", "", gpus(16), overcommit=3.0)
    assert (await service.get_node("loose")).overcommit == 3.0
    placed = [(await service.create_lease(LeaseRequest(vram_bytes=12 * G)))[0].node_id for _ in range(5)]
    assert sorted(placed) == ["loose"] * 4 + ["tight"]  # 48 GiB bookable on loose, 16 on tight
    with pytest.raises(BadRequest, match="at least 1"):
        await service.register_node("odd", ["tcp://o:7100"], "sim", "", gpus(16), overcommit=0.5)


async def test_store_booking_is_atomic_on_the_same_rule(store: Store, clock: FakeClock) -> None:
    """place_lease itself refuses what placement would refuse, whatever snapshot the caller decided on."""
    svc = PoolService(store, ServiceConfig(), clock=clock)
    await svc.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))

    def lease(lid: str, gib: int, qos: QoS) -> LeaseRecord:
        return LeaseRecord(
            lease_id=lid, token_hash=f"h-{lid}", node_id="n1", endpoints=["tcp://n1:7100"],
            allocs=[GpuAlloc(gpu=0, vram_bytes=gib * G)], vram_bytes=gib * G, gpu_count=1, qos=qos, ttl_s=60,
            created_at=clock(), expires_at=clock() + 60,
        )  # fmt: skip

    assert await store.place_lease(lease("a", 12, QoS.standard), 2.0) is None
    assert await store.place_lease(lease("b", 12, QoS.standard), 1.0) is not None  # at the pool's ratio 1
    assert await store.place_lease(lease("b", 12, QoS.standard), 2.0) is None
    assert await store.place_lease(lease("c", 20, QoS.standard), 4.0) is not None  # more than real memory
    assert await store.place_lease(lease("g1", 1, QoS.guaranteed), 4.0) is not None  # 24 booked > 16 real
    for lid in ("a", "b"):
        assert (await store.end_lease(lid, LeaseState.released, "done", clock())).ended_now
    assert await store.place_lease(lease("g1", 6, QoS.guaranteed), 4.0) is None
    assert await store.place_lease(lease("s1", 12, QoS.standard), 4.0) is not None  # 6 + 12 > 16 real
    assert await store.place_lease(lease("s1", 10, QoS.standard), 4.0) is None
    assert await store.place_lease(lease("s2", 10, QoS.best_effort), 4.0) is None  # 26 booked <= 64
    assert await store.place_lease(lease("g2", 1, QoS.guaranteed), 4.0) is not None
    node = await store.get_node("n1")
    assert node is not None and node.reserved == {0: 26 * G} and node.guaranteed_reserved == {0: 6 * G}
    view = {n.node_id: n for n in await store.placement_view()}["n1"]
    assert view.guaranteed == {0: 6 * G} and view.free(0, 4.0) == 10 * G and view.free(0, 4.0, QoS.guaranteed) < 0
    assert (await store.end_lease("g1", LeaseState.released, "done", clock())).ended_now
    assert not (await store.end_lease("g1", LeaseState.released, "again", clock())).ended_now
    node = await store.get_node("n1")
    assert node is not None and node.reserved == {0: 20 * G} and node.guaranteed_reserved == {}


async def test_guaranteed_bookings_survive_a_restart(store_kit: StoreKit, clock: FakeClock) -> None:
    store = await store_kit.new()
    svc = PoolService(store, ServiceConfig(overcommit_ratio=2.0), clock=clock)
    await svc.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16), overcommit=2.0)
    await svc.create_lease(LeaseRequest(vram_bytes=6 * G, qos=QoS.guaranteed))
    await svc.create_lease(LeaseRequest(vram_bytes=10 * G))
    store = await store_kit.reopen(store)
    node = await store.get_node("n1")
    assert node is not None and node.overcommit == 2.0
    assert node.reserved == {0: 16 * G} and node.guaranteed_reserved == {0: 6 * G}
    svc = PoolService(store, ServiceConfig(), clock=clock)  # the node's own ratio 2 still applies
    with pytest.raises(NoCapacity, match="guaranteed"):
        await svc.create_lease(LeaseRequest(vram_bytes=G, qos=QoS.guaranteed))
    assert (await svc.create_lease(LeaseRequest(vram_bytes=8 * G)))[0].node_id == "n1"
    with pytest.raises(NoCapacity, match="the most free on one GPU is 8.0 GiB"):
        await svc.create_lease(LeaseRequest(vram_bytes=9 * G))  # 24 + 9 > 32 bookable


def test_pool_ratio_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ServiceConfig(overcommit_ratio=0.9)
    with pytest.raises(ValueError, match="idle timeout"):
        ServiceConfig(default_idle_timeout_s=-1)


def test_why_not_names_the_guaranteed_rule() -> None:
    n = NodeCapacity("n", NodeState.up, ["tcp://n:1"], {0: 16 * G}, {0: 12 * G}, {})
    assert place([n], 8 * G, 1, Strategy.pack, overcommit=2.0) is not None
    assert place([n], 8 * G, 1, Strategy.pack, qos=QoS.guaranteed, overcommit=2.0) is None
    reason = why_not([n], 8 * G, 1, qos=QoS.guaranteed, overcommit=2.0)
    assert "guaranteed sessions are never paged out" in reason and "4.0 GiB" in reason


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(1, 16), st.integers(0, 40), st.integers(0, 16)), min_size=1, max_size=3),
            st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.0]),
        ),
        min_size=1,
        max_size=4,
    ),
    pool_ratio=st.sampled_from([1.0, 1.25, 2.0]),
    want=st.integers(1, 20),
    count=st.integers(1, 3),
    qos=st.sampled_from(list(QoS)),
)
def test_overcommitted_placement_is_sound_and_complete(
    nodes: list[tuple[list[tuple[int, int, int]], float]], pool_ratio: float, want: int, count: int, qos: QoS
) -> None:
    """In quarter GiB: each GPU (capacity, booked, guaranteed booked); a node ratio of 0 means the pool's."""
    view = []
    for i, (gs, ratio) in enumerate(nodes):
        caps = {g: quarter_gib_multiples(c) for g, (c, _, _) in enumerate(gs)}
        booked = {g: quarter_gib_multiples(b) for g, (_, b, _) in enumerate(gs)}
        guar = {g: quarter_gib_multiples(min(gb, b)) for g, (_, b, gb) in enumerate(gs)}
        view.append(NodeCapacity(f"n{i}", NodeState.up, [f"tcp://n{i}:1"], caps, booked, guar, ratio))
    size = quarter_gib_multiples(want)

    def fits(n: NodeCapacity, g: int) -> bool:
        r = n.overcommit or pool_ratio
        cap = n.capacity[g]
        if qos == QoS.guaranteed:
            return n.reserved[g] + size <= cap
        return n.reserved[g] + size <= int(cap * r) and n.guaranteed[g] + size <= cap

    p = place(view, size, count, Strategy.pack, qos=qos, overcommit=pool_ratio)
    feasible = any(sum(1 for g in n.capacity if fits(n, g)) >= count for n in view)
    assert (p is not None) == feasible
    if p is not None:
        node = next(n for n in view if n.node_id == p.node_id)
        assert len(set(p.gpus)) == count and all(fits(node, g) for g in p.gpus)
