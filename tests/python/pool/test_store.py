"""The store contract, run on both stores (embedded and a real Redis): atomic booking within capacity, ending
exactly once, conditional down-marking, heartbeats that cannot revive a down node, commands, and restarts."""

from __future__ import annotations

import asyncio

from conftest import FakeClock, GiB, StoreKit, gpus

from fargpu.pool_manager.models import GpuAlloc, LeaseRecord, LeaseState, NodeRecord, NodeState, SessionInfo
from fargpu.pool_manager.store import Command, Store
from fargpu.pool_manager.tokens import new_lease_id, token_hash


def node(node_id: str, *sizes: float, now: float = 1_800_000_000.0) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        endpoints=[f"tcp://{node_id}:7100"],
        backend="sim",
        gpus=gpus(*sizes),
        registered_at=now,
        last_heartbeat=now,
    )


def lease(node_id: str, allocs: dict[int, float], now: float = 1_800_000_000.0, ttl: float = 60) -> LeaseRecord:
    lid = new_lease_id()
    return LeaseRecord(
        lease_id=lid,
        token_hash=token_hash("tok-" + lid),
        node_id=node_id,
        endpoints=[f"tcp://{node_id}:7100"],
        allocs=[GpuAlloc(gpu=g, vram_bytes=int(b * GiB)) for g, b in allocs.items()],
        vram_bytes=int(next(iter(allocs.values())) * GiB),
        gpu_count=len(allocs),
        qos="standard",
        ttl_s=ttl,
        created_at=now,
        expires_at=now + ttl,
    )


async def test_books_within_capacity_and_refuses_beyond(store: Store) -> None:
    await store.register_node(node("n1", 10, 10))
    a = lease("n1", {0: 6})
    assert await store.place_lease(a) is None
    assert await store.place_lease(lease("n1", {0: 5})) is not None  # 6 + 5 > 10
    assert await store.place_lease(lease("n1", {0: 4})) is None  # exactly full
    assert await store.place_lease(lease("n1", {1: 10})) is None
    n = await store.get_node("n1")
    assert n is not None and n.reserved == {0: 10 * GiB, 1: 10 * GiB}
    assert await store.place_lease(lease("n1", {7: 1})) is not None  # no such GPU
    assert await store.place_lease(lease("nope", {0: 1})) is not None  # unknown node
    dup = a.model_copy()
    assert "already exists" in (await store.place_lease(dup) or "")


async def test_concurrent_bookings_never_exceed_capacity(store: Store) -> None:
    await store.register_node(node("n1", 10))
    results = await asyncio.gather(*(store.place_lease(lease("n1", {0: 3})) for _ in range(20)))
    assert sum(r is None for r in results) == 3
    n = await store.get_node("n1")
    assert n is not None and n.reserved == {0: 9 * GiB}


async def test_end_lease_exactly_once_returns_vram_once(store: Store, clock: FakeClock) -> None:
    await store.register_node(node("n1", 10))
    a = lease("n1", {0: 4})
    assert await store.place_lease(a) is None
    results = await asyncio.gather(
        *(store.end_lease(a.lease_id, LeaseState.released, f"r{i}", clock()) for i in range(10))
    )
    assert sum(r.ended_now for r in results) == 1
    n = await store.get_node("n1")
    assert n is not None and n.reserved.get(0, 0) == 0
    got = await store.get_lease(a.lease_id)
    assert got is not None and got.state == LeaseState.released and got.end_reason in {f"r{i}" for i in range(10)}
    assert await store.list_leases() == []
    assert [x.lease_id for x in await store.list_leases(include_ended=True)] == [a.lease_id]
    assert (await store.end_lease("missing", LeaseState.released, "x", clock())).lease is None
    assert await store.active_lease_ids_on("n1") == []


async def test_renew_expiry_index_and_token_lookup(store: Store, clock: FakeClock) -> None:
    await store.register_node(node("n1", 10))
    a, b = lease("n1", {0: 1}, ttl=10), lease("n1", {0: 1}, ttl=20)
    for x in (a, b):
        assert await store.place_lease(x) is None
    assert await store.next_expiry() == a.expires_at
    assert await store.expired_lease_ids(a.expires_at) == [a.lease_id]
    renewed = await store.renew_lease(a.lease_id, a.expires_at + 100)
    assert renewed is not None and renewed.expires_at == a.expires_at + 100
    assert await store.expired_lease_ids(a.expires_at + 50) == [b.lease_id]
    assert await store.next_expiry() == b.expires_at
    found = await store.lease_by_token_hash(token_hash("tok-" + a.lease_id))
    assert found is not None and found.lease_id == a.lease_id
    assert await store.lease_by_token_hash(token_hash("wrong")) is None
    await store.end_lease(b.lease_id, LeaseState.expired, "gone", clock())
    unchanged = await store.renew_lease(b.lease_id, clock() + 1000)
    assert unchanged is not None and unchanged.state == LeaseState.expired and unchanged.expires_at == b.expires_at
    assert await store.renew_lease("missing", 1.0) is None


async def test_mark_down_only_if_still_silent(store: Store, clock: FakeClock) -> None:
    now = clock()
    await store.register_node(node("n1", 10, now=now))
    a = lease("n1", {0: 2})
    assert await store.place_lease(a) is None
    assert await store.heartbeat("n1", gpus(10), [], False, now + 5)
    assert await store.mark_down("n1", "silent", stale_before=now + 1) is None  # heard from at now+5
    assert await store.mark_down("n1", "silent", stale_before=now + 6) == [a.lease_id]
    assert await store.mark_down("n1", "again", stale_before=None) is None  # already down
    n = await store.get_node("n1")
    assert n is not None and n.state == NodeState.down and n.state_reason == "silent"
    assert not await store.heartbeat("n1", gpus(10), [], False, now + 7)  # a down node must register again
    assert "down" in (await store.place_lease(lease("n1", {0: 1})) or "")
    await store.register_node(node("n1", 10, now=now + 8))
    n = await store.get_node("n1")
    assert n is not None and n.state == NodeState.up


async def test_drain_and_heartbeat_telemetry(store: Store, clock: FakeClock) -> None:
    await store.register_node(node("n1", 16))
    session = SessionInfo(session_id="s1", lease_id="l1", node_id="n1", pid=42, vram_used_bytes=GiB, client="h:1")
    telemetry = gpus(16)
    telemetry[0].free_bytes = 12 * GiB
    telemetry[0].utilization_pct = 55.0
    assert await store.heartbeat("n1", telemetry, [session], False, clock() + 1)
    n = await store.get_node("n1")
    assert n is not None
    assert n.sessions == [session] and n.gpus[0].free_bytes == 12 * GiB and n.gpus[0].utilization_pct == 55.0
    assert n.vram_used_bytes == 4 * GiB and n.last_heartbeat == clock() + 1
    drained = await store.set_draining("n1", "maintenance")
    assert drained is not None and drained.state == NodeState.draining
    assert "draining" in (await store.place_lease(lease("n1", {0: 1})) or "")
    assert await store.set_draining("nope", "x") is None
    view = {v.node_id: v for v in await store.placement_view()}
    assert view["n1"].state == NodeState.draining and view["n1"].capacity == {0: 16 * GiB}


async def test_commands_queue_per_node(store: Store) -> None:
    await store.push_command("n1", Command("c1", "end_lease", lease_id="l1", reason="bye"))
    await store.push_command("n1", Command("c2", "drain", reason="maintenance"))
    assert await store.take_commands("n2", 0.01) == []
    assert await store.take_commands("n1", 0.01) == [
        Command("c1", "end_lease", lease_id="l1", reason="bye"),
        Command("c2", "drain", reason="maintenance"),
    ]
    assert await store.take_commands("n1", 0.01) == []

    async def later() -> None:
        await asyncio.sleep(0.05)
        await store.push_command("n1", Command("c3", "drain"))

    task = asyncio.create_task(later())
    assert [c.command_id for c in await store.take_commands("n1", 2.0)] == ["c3"]
    await task


async def test_restart_keeps_leases_and_bookings(store_kit: StoreKit, clock: FakeClock) -> None:
    store = await store_kit.new()
    await store.register_node(node("n1", 10, 10))
    kept, ended = lease("n1", {0: 6, 1: 6}), lease("n1", {0: 4})
    for x in (kept, ended):
        assert await store.place_lease(x) is None
    await store.end_lease(ended.lease_id, LeaseState.released, "done", clock())
    await store.renew_lease(kept.lease_id, kept.expires_at + 30)

    store = await store_kit.reopen(store)

    got = await store.get_lease(kept.lease_id)
    assert got is not None and got.state == LeaseState.active and got.expires_at == kept.expires_at + 30
    assert got.allocs == kept.allocs
    gone = await store.get_lease(ended.lease_id)
    assert gone is not None and gone.state == LeaseState.released and gone.end_reason == "done"
    assert (await store.lease_by_token_hash(kept.token_hash)) is not None
    n = await store.get_node("n1")
    assert n is not None and n.reserved == {0: 6 * GiB, 1: 6 * GiB}
    assert await store.place_lease(lease("n1", {0: 5})) is not None  # bookings survived: 6 + 5 > 10
    assert await store.place_lease(lease("n1", {0: 4})) is None
    on_node = await store.active_lease_ids_on("n1")
    assert kept.lease_id in on_node and len(on_node) == 2


async def test_purge_ended(store: Store, clock: FakeClock) -> None:
    await store.register_node(node("n1", 10))
    a = lease("n1", {0: 1})
    assert await store.place_lease(a) is None
    await store.end_lease(a.lease_id, LeaseState.released, "done", clock())
    assert await store.purge_ended(clock() + 1) == 1
    assert await store.list_leases(include_ended=True) == []
