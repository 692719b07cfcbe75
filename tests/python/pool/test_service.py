"""Pool rules on both stores, with a hand-driven clock: leasing, renewal, release, expiry, node loss with a
readable reason, heartbeat reconciliation, drain, token validation, the wait queue, and restarts."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import FakeClock, GiB, StoreKit, gpus

from fargpu.pool_manager.errors import BadRequest, Conflict, NoCapacity, NotFound
from fargpu.pool_manager.models import LeaseState, NodeState, QoS, SessionInfo
from fargpu.pool_manager.placement import Strategy
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest, ServiceConfig
from fargpu.pool_manager.store import Store
from fargpu.pool_manager.tokens import token_hash


async def test_lease_lifecycle(service: PoolService, clock: FakeClock) -> None:
    await service.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16, 16))
    lease, token = await service.create_lease(LeaseRequest(vram_bytes=8 * GiB, gpu_count=2, ttl_s=30))
    assert lease.node_id == "n1" and lease.endpoints == ["tcp://n1:7100"]
    assert sorted(a.gpu for a in lease.allocs) == [0, 1] and lease.quota_bytes == 16 * GiB
    assert lease.expires_at == clock() + 30 and lease.token_hash == token_hash(token)
    clock.advance(20)
    renewed = await service.renew_lease(lease.lease_id)
    assert renewed.expires_at == clock() + 30
    released = await service.release_lease(lease.lease_id)
    assert released.state == LeaseState.released and released.end_reason == "released by its owner"
    with pytest.raises(Conflict, match="released by its owner"):
        await service.release_lease(lease.lease_id)
    with pytest.raises(Conflict, match="has ended"):
        await service.renew_lease(lease.lease_id)
    with pytest.raises(NotFound):
        await service.release_lease("lease-nope")
    commands = await service.next_commands("n1", 0.01)
    assert [(c.kind, c.lease_id) for c in commands] == [("end_lease", lease.lease_id)]


async def test_no_capacity_is_503_with_reason_and_retry_after(service: PoolService, clock: FakeClock) -> None:
    with pytest.raises(NoCapacity, match="no node is up"):
        await service.create_lease(LeaseRequest(vram_bytes=GiB))
    await service.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))
    with pytest.raises(NoCapacity, match="no GPU in the pool has 32.0 GiB"):
        await service.create_lease(LeaseRequest(vram_bytes=32 * GiB))
    with pytest.raises(NoCapacity, match="no node up has 2 GPUs"):
        await service.create_lease(LeaseRequest(vram_bytes=GiB, gpu_count=2))
    await service.create_lease(LeaseRequest(vram_bytes=12 * GiB, ttl_s=20))
    with pytest.raises(NoCapacity, match="the pool is full") as e:
        await service.create_lease(LeaseRequest(vram_bytes=8 * GiB))
    assert e.value.retry_after_s == 20  # when the blocking lease expires
    with pytest.raises(BadRequest):
        await service.create_lease(LeaseRequest(vram_bytes=0))
    with pytest.raises(BadRequest):
        await service.create_lease(LeaseRequest(vram_bytes=GiB, ttl_s=10**9))


async def test_pack_and_spread(service: PoolService) -> None:
    await service.register_node("a", ["tcp://a:1"], "sim", "", gpus(24, 24))
    await service.register_node("b", ["tcp://b:1"], "sim", "", gpus(24, 24))
    first, _ = await service.create_lease(LeaseRequest(vram_bytes=8 * GiB))
    second, _ = await service.create_lease(LeaseRequest(vram_bytes=8 * GiB))
    assert (second.node_id, second.allocs[0].gpu) == (first.node_id, first.allocs[0].gpu)  # packed
    spread, _ = await service.create_lease(LeaseRequest(vram_bytes=8 * GiB, strategy=Strategy.spread))
    assert spread.node_id != first.node_id  # the emptiest node


async def test_expiry_ends_lease_and_frees_vram(service: PoolService, clock: FakeClock) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    lease, _ = await service.create_lease(LeaseRequest(vram_bytes=10 * GiB, ttl_s=5))
    clock.advance(4)
    await service.sweep_once()
    assert (await service.get_lease(lease.lease_id)).state == LeaseState.active
    await service.node_heartbeat("n1", gpus(10), [])
    clock.advance(2)
    await service.sweep_once()
    ended = await service.get_lease(lease.lease_id)
    assert ended.state == LeaseState.expired and "expired" in (ended.end_reason or "")
    again, _ = await service.create_lease(LeaseRequest(vram_bytes=10 * GiB))
    assert again.node_id == "n1"


async def test_silent_node_is_marked_down_and_its_leases_end_with_a_reason(
    service: PoolService, clock: FakeClock
) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    await service.register_node("n2", ["tcp://n2:1"], "sim", "", gpus(10))
    lease, token = await service.create_lease(LeaseRequest(vram_bytes=6 * GiB, ttl_s=300))
    other = "n2" if lease.node_id == "n1" else "n1"
    clock.advance(8)
    await service.node_heartbeat(other, gpus(10), [])
    await service.sweep_once()
    assert (await service.get_lease(lease.lease_id)).state == LeaseState.active
    clock.advance(3)  # 11 s of silence from lease.node_id; `other` was heard 3 s ago
    await service.sweep_once()
    lost = await service.get_lease(lease.lease_id)
    assert lost.state == LeaseState.lost
    assert f"node {lease.node_id} stopped responding" in (lost.end_reason or "")
    nodes = {n.node_id: n for n in await service.list_nodes()}
    assert nodes[lease.node_id].state == NodeState.down and nodes[other].state == NodeState.up
    known, _ = await service.node_heartbeat(lease.node_id, gpus(10), [])
    assert not known
    valid, why = await service.validate_token(lease.node_id, token_hash(token))
    assert valid is None and "stopped responding" in why
    moved, _ = await service.create_lease(LeaseRequest(vram_bytes=6 * GiB))
    assert moved.node_id == other


async def test_heartbeat_names_sessions_of_ended_or_foreign_leases(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    live, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    done, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    await service.evict_lease(done.lease_id, "make room")

    def s(lease_id: str) -> SessionInfo:
        return SessionInfo(
            session_id=f"s-{lease_id}", lease_id=lease_id, node_id="n1", pid=1, vram_used_bytes=0, client="c"
        )

    known, stale = await service.node_heartbeat("n1", gpus(10), [s(live.lease_id), s(done.lease_id), s("forged")])
    assert known
    assert dict(stale) == {
        done.lease_id: "the lease has ended (evicted): evicted by an operator: make room",
        "forged": "the pool does not know this lease",
    }
    assert len(await service.list_sessions()) == 3


async def test_validate_token(service: PoolService, clock: FakeClock) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    await service.register_node("n2", ["tcp://n2:1"], "sim", "", gpus(1))
    lease, token = await service.create_lease(LeaseRequest(vram_bytes=4 * GiB, ttl_s=10))
    assert lease.node_id == "n1"
    ok, why = await service.validate_token("n1", token_hash(token))
    assert ok is not None and ok.lease_id == lease.lease_id and ok.quota_bytes == 4 * GiB and why == ""
    bad, why = await service.validate_token("n2", token_hash(token))
    assert bad is None and "placed on node n1" in why
    bad, why = await service.validate_token("n1", token_hash(token + "x"))
    assert bad is None and why == "unknown lease token"
    clock.advance(11)  # expired, not yet swept
    bad, why = await service.validate_token("n1", token_hash(token))
    assert bad is None and "expired" in why


async def test_drain_stops_placement_and_queues_a_command(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    kept, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    node = await service.drain_node("n1", "kernel upgrade")
    assert node.state == NodeState.draining and "kernel upgrade" in (node.state_reason or "")
    with pytest.raises(NoCapacity):
        await service.create_lease(LeaseRequest(vram_bytes=GiB))
    assert (await service.get_lease(kept.lease_id)).state == LeaseState.active
    assert [c.kind for c in await service.next_commands("n1", 0.01)] == ["drain"]
    with pytest.raises(NotFound):
        await service.drain_node("nope")


async def test_wait_queue_serves_by_qos_then_arrival(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    holder, _ = await service.create_lease(LeaseRequest(vram_bytes=10 * GiB))
    low = asyncio.create_task(service.create_lease(LeaseRequest(vram_bytes=10 * GiB, qos=QoS.best_effort, wait_s=30)))
    await asyncio.sleep(0.01)
    high = asyncio.create_task(service.create_lease(LeaseRequest(vram_bytes=10 * GiB, qos=QoS.guaranteed, wait_s=30)))
    await asyncio.sleep(0.01)
    assert service.waiting == 2
    await service.serve_queue()
    assert not low.done() and not high.done()  # still full
    await service.release_lease(holder.lease_id)
    await service.serve_queue()
    got_high, _ = await asyncio.wait_for(high, 1)
    assert not low.done()
    await service.release_lease(got_high.lease_id)
    await service.serve_queue()
    got_low, _ = await asyncio.wait_for(low, 1)
    assert got_low.qos == QoS.best_effort and service.waiting == 0


async def test_wait_times_out_with_503(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    await service.create_lease(LeaseRequest(vram_bytes=10 * GiB))
    with pytest.raises(NoCapacity, match="waited 0.1s"):
        await service.create_lease(LeaseRequest(vram_bytes=GiB, wait_s=0.1))
    assert service.waiting == 0


async def test_waiter_that_gave_up_gets_nothing_booked(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    holder, _ = await service.create_lease(LeaseRequest(vram_bytes=10 * GiB))
    # 1. The client went away before capacity freed: the queue skips it.
    gone = asyncio.create_task(service.create_lease(LeaseRequest(vram_bytes=10 * GiB, wait_s=30)))
    await asyncio.sleep(0.01)
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    await service.release_lease(holder.lease_id)
    await service.serve_queue()
    assert await service.list_leases() == []
    # 2. The client goes away while the queue is placing its lease: the lease is released again.
    holder, _ = await service.create_lease(LeaseRequest(vram_bytes=10 * GiB))
    racing = asyncio.create_task(service.create_lease(LeaseRequest(vram_bytes=10 * GiB, wait_s=30)))
    await asyncio.sleep(0.01)
    racing.cancel()  # delivered only when `racing` runs again, after the placement below
    await service.release_lease(holder.lease_id)
    await service.serve_queue()
    with contextlib.suppress(asyncio.CancelledError):
        await racing
    assert await service.list_leases() == []  # whichever came first, nothing stays booked
    assert (await service.get_node("n1")).vram_reserved_bytes == 0


async def test_background_queue_places_waiter_when_capacity_frees(store: Store) -> None:
    svc = PoolService(store, ServiceConfig(queue_poll_s=5.0, sweep_interval_s=60))
    await svc.start()
    try:
        await svc.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
        holder, _ = await svc.create_lease(LeaseRequest(vram_bytes=10 * GiB))
        waiting = asyncio.create_task(svc.create_lease(LeaseRequest(vram_bytes=10 * GiB, wait_s=10)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await svc.release_lease(holder.lease_id)  # kicks the queue: no need to wait for the 5 s poll
        lease, _ = await asyncio.wait_for(waiting, 2)
        assert lease.state == LeaseState.active
    finally:
        await svc.stop()


async def test_restart_loses_no_lease(store_kit: StoreKit, clock: FakeClock) -> None:
    store = await store_kit.new()
    svc = PoolService(store, clock=clock)
    await svc.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(10))
    leases = [await svc.create_lease(LeaseRequest(vram_bytes=3 * GiB, ttl_s=100)) for _ in range(3)]
    await svc.release_lease(leases[0][0].lease_id)
    await svc.stop()

    store = await store_kit.reopen(store)
    svc = PoolService(store, clock=clock)
    active = {x.lease_id for x in await svc.list_leases()}
    assert active == {leases[1][0].lease_id, leases[2][0].lease_id}
    lease, token = leases[2]
    ok, _ = await svc.validate_token("n1", token_hash(token))
    assert ok is not None and ok.lease_id == lease.lease_id
    assert (await svc.renew_lease(lease.lease_id)).state == LeaseState.active
    with pytest.raises(NoCapacity):  # 6 GiB booked survives: 6 + 6 > 10
        await svc.create_lease(LeaseRequest(vram_bytes=6 * GiB))
    await svc.create_lease(LeaseRequest(vram_bytes=4 * GiB))
