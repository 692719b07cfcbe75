"""A lease outlives its node, on both stores: a node reports a lease's sessions parked (the pool notes where), the
node is to go (the parked lease is bound to no node and its bookings go back), the lease resumes on another node
(its token is valid there and only there), an operator relocates a live lease, and the store's scaling primitives
(the autoscaler lock, published demand, forgetting a stopped node) behave as the autoscaler relies on."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FakeClock, GiB, gpus

from fargpu.pool_manager.errors import Conflict, NoCapacity
from fargpu.pool_manager.models import LeaseState, SessionInfo
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest, ServiceConfig
from fargpu.pool_manager.store import Store
from fargpu.pool_manager.tokens import token_hash


def reported(lease_id: str, state: str, node: str = "a", result: str | None = None) -> list[SessionInfo]:
    return [SessionInfo(session_id="s1", lease_id=lease_id, node_id=node, pid=0, vram_used_bytes=0, client="c",
                        state=state, page_result=result)]  # fmt: skip


async def test_parked_lease_frees_its_node_and_resumes_elsewhere(service: PoolService, clock: FakeClock) -> None:
    await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(16), capabilities=["park"])
    lease, token = await service.create_lease(LeaseRequest(vram_bytes=10 * GiB))
    assert lease.node_id == "a"
    assert (await service.get_node("a")).capabilities == ["park"]
    # the node reports the lease's session parked (as a node server does for a while after its worker exits)
    known, stale = await service.node_heartbeat("a", gpus(16), reported(lease.lease_id, "parked",
                                                result="parked sessions/s1 1024 5000"))  # fmt: skip
    assert known and stale == []  # a parked report is not a running session: nothing to end
    parked = await service.get_lease(lease.lease_id)
    assert parked.parked_ref == "sessions/s1" and parked.node_id == "a"  # still bound while its node is up
    # restored on the same node: live again
    await service.node_heartbeat("a", gpus(16), reported(lease.lease_id, "resident"))
    assert (await service.get_lease(lease.lease_id)).parked_ref is None
    await service.node_heartbeat("a", gpus(16), reported(lease.lease_id, "parked", result="parked sessions/s1 1 2"))
    # the node is to go: its parked leases are bound to no node, their bookings given back
    assert await service.unbind_parked("a") == [lease.lease_id]
    parked = await service.get_lease(lease.lease_id)
    assert parked.node_id == "" and parked.endpoints == [] and parked.parked_ref == "sessions/s1"
    assert parked.state == LeaseState.active
    assert (await service.get_node("a")).reserved == {}
    assert await service.store.active_lease_ids_on("a") == []
    valid, why = await service.validate_token("a", token_hash(token))
    assert valid is None and "is parked" in why
    known, stale = await service.node_heartbeat("a", gpus(16), reported(lease.lease_id, "resident"))
    assert stale == [(lease.lease_id, "the lease is parked")]  # a live session of it there must end
    # the node it lived on is full now; the client's resume places the lease on b
    await service.create_lease(LeaseRequest(vram_bytes=16 * GiB))
    await service.register_node("b", ["tcp://b:1"], "sim", "", gpus(16))
    await service.next_commands("a", 0.01)
    resumed = await service.resume_lease(lease.lease_id)
    assert resumed.node_id == "b" and resumed.endpoints == ["tcp://b:1"] and resumed.moves == 1
    assert (await service.get_node("b")).reserved == {0: 10 * GiB}
    assert (await service.validate_token("b", token_hash(token)))[0] is not None
    assert (await service.validate_token("a", token_hash(token)))[0] is None
    assert await service.next_commands("a", 0.01) == []  # nothing of the lease was left on a
    # resuming a lease that is bound to a node changes nothing
    assert (await service.resume_lease(lease.lease_id)).node_id == "b"
    # ending a resumed lease gives b's booking back exactly once
    await service.release_lease(lease.lease_id)
    assert (await service.get_node("b")).reserved == {}


async def test_relocate_live_lease_moves_bookings_and_tells_both_nodes(service: PoolService) -> None:
    await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(16))
    await service.register_node("b", ["tcp://b:1"], "sim", "", gpus(16, 16))
    lease, token = await service.create_lease(LeaseRequest(vram_bytes=12 * GiB, gpu_count=1))
    src = lease.node_id
    dst = "b" if src == "a" else "a"
    with pytest.raises(Conflict, match="already"):
        await service.relocate(lease.lease_id, src)
    moved = await service.relocate(lease.lease_id, dst)
    assert moved.node_id == dst and moved.quota_bytes == 12 * GiB
    assert (await service.get_node(src)).reserved == {}
    assert sum((await service.get_node(dst)).reserved.values()) == 12 * GiB
    assert await service.next_commands(dst, 0.01) == []  # the client reconnects there by itself
    ends = await service.next_commands(src, 0.01)
    assert [(c.kind, c.reason) for c in ends] == [("end_lease", f"the lease moved to node {dst}")]
    assert (await service.validate_token(dst, token_hash(token)))[0] is not None
    known, stale = await service.node_heartbeat(src, gpus(16), [], False)
    assert known and stale == []
    # no room anywhere else: a clear refusal, the lease stays where it is
    await service.create_lease(LeaseRequest(vram_bytes=16 * GiB))
    await service.create_lease(LeaseRequest(vram_bytes=16 * GiB))
    with pytest.raises(NoCapacity, match="cannot move"):
        await service.relocate(lease.lease_id)
    assert (await service.get_lease(lease.lease_id)).node_id == dst
    await service.release_lease(lease.lease_id)
    with pytest.raises(Conflict, match="has ended"):
        await service.relocate(lease.lease_id)


async def test_resume_waits_for_room_and_publishes_demand(service: PoolService) -> None:
    await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(16), capabilities=["park"])
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=8 * GiB))
    await service.node_heartbeat("a", gpus(16), reported(lease.lease_id, "parked"))
    await service.drain_node("a")
    assert await service.unbind_parked("a") == [lease.lease_id]
    task = asyncio.create_task(service.resume_lease(lease.lease_id, wait_s=10))
    for _ in range(200):
        if await service.store.demand():
            break
        await asyncio.sleep(0.01)
    assert [d for d in await service.store.demand()] == ['[{"vram_bytes": 8589934592, "gpus": 1, "qos": "standard"}]']
    assert not task.done()
    await service.register_node("c", ["tcp://c:1"], "sim", "", gpus(16))
    resumed = await asyncio.wait_for(task, 5)
    assert resumed.node_id == "c"
    assert await service.store.demand() == []  # cleared once nothing waits


async def test_a_waiting_resume_is_woken_by_the_node_that_registers(store: Store, clock: FakeClock) -> None:
    """A lease waiting to move (a resume at zero nodes) goes on as soon as a node registers with this pool manager,
    not at its next poll (an hour away here)."""
    service = PoolService(store, ServiceConfig(heartbeat_timeout_s=10.0, queue_poll_s=3600.0), clock=clock)
    await service.start(background=False)
    try:
        await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(16), capabilities=["park"])
        lease, _ = await service.create_lease(LeaseRequest(vram_bytes=8 * GiB))
        await service.node_heartbeat("a", gpus(16), reported(lease.lease_id, "parked"))
        await service.drain_node("a")
        assert await service.unbind_parked("a") == [lease.lease_id]
        task = asyncio.create_task(service.resume_lease(lease.lease_id, wait_s=600))
        for _ in range(500):
            if await service.store.demand():
                break
            await asyncio.sleep(0.01)
        assert await service.store.demand() and not task.done()
        await service.register_node("c", ["tcp://c:1"], "sim", "", gpus(16))
        resumed = await asyncio.wait_for(task, 30)
        assert resumed.node_id == "c"
    finally:
        await service.stop()


async def test_store_lock_one_owner_at_a_time(store: Store) -> None:
    assert await store.try_lock("autoscaler", "m1", 0.3)
    assert await store.try_lock("autoscaler", "m1", 0.3)  # the holder extends it
    assert not await store.try_lock("autoscaler", "m2", 0.3)
    await store.unlock("autoscaler", "m2")  # not the holder: nothing happens
    assert not await store.try_lock("autoscaler", "m2", 0.3)
    await store.unlock("autoscaler", "m1")
    assert await store.try_lock("autoscaler", "m2", 0.2)
    await asyncio.sleep(0.35)  # m2 stopped extending it: it lapses
    assert await store.try_lock("autoscaler", "m1", 5)


async def test_store_demand_lapses_and_clears(store: Store) -> None:
    await store.put_demand("m1", '[{"vram_bytes": 1, "gpus": 1, "qos": "standard"}]', 0.3)
    await store.put_demand("m2", "[]", 30)
    assert sorted(await store.demand()) == ["[]", '[{"vram_bytes": 1, "gpus": 1, "qos": "standard"}]']
    await store.put_demand("m2", "", 30)
    await asyncio.sleep(0.4)
    assert await store.demand() == []


async def test_forget_node_only_when_down_and_empty(service: PoolService) -> None:
    store = service.store
    await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(16))
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    assert not await store.forget_node("a")  # up
    await store.mark_down("a", "stopped", None)
    assert not await store.forget_node("a")  # down, but a lease is still booked there
    await service.release_lease(lease.lease_id)
    assert await store.forget_node("a")
    assert await store.get_node("a") is None and await store.list_nodes() == []
    assert await store.placement_view() == []
    await service.register_node("a", ["tcp://a:2"], "sim", "", gpus(8))  # the same id may come back
    assert (await service.get_node("a")).vram_total_bytes == 8 * GiB


async def test_a_dead_nodes_parked_lease_lives_on_and_its_live_one_is_lost(service: PoolService,
                                                                         clock: FakeClock) -> None:  # fmt: skip
    await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(16), capabilities=["park"])
    parked, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    live, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    s = reported(parked.lease_id, "parked", result="parked sessions/s1 1 2")
    s += [SessionInfo(session_id="s2", lease_id=live.lease_id, node_id="a", pid=7, vram_used_bytes=0, client="c")]
    await service.node_heartbeat("a", gpus(16), s)
    clock.advance(11)  # a is killed: no heartbeat for longer than the timeout
    await service.sweep_once()
    assert (await service.get_lease(live.lease_id)).state == LeaseState.lost
    kept = await service.get_lease(parked.lease_id)
    assert kept.state == LeaseState.active and kept.node_id == "" and kept.parked_ref == "sessions/s1"
    await service.register_node("b", ["tcp://b:1"], "sim", "", gpus(16))
    assert (await service.resume_lease(parked.lease_id)).node_id == "b"
