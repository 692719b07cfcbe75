"""Two pool managers on one Redis never double-book: many concurrent lease requests through both REST APIs
fill the pool exactly to capacity, bookings always equal what the active leases hold, and racing to end the
same leases from both sides gives each lease's VRAM back exactly once."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import GiB, gpus, tenant_headers

from fargpu.pool_manager.api import create_app
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import ServiceConfig
from fargpu.pool_manager.store_redis import RedisStore

NODES, GPUS_PER_NODE, GPU_GIB, LEASE_GIB = 4, 2, 10, 3  # 3 leases per GPU -> 24 slots
SLOTS = NODES * GPUS_PER_NODE * (GPU_GIB // LEASE_GIB)


@pytest.fixture
async def two_managers(redis_url: str) -> AsyncIterator[list[tuple[PoolService, httpx.AsyncClient]]]:
    prefix = f"multi{random.randrange(1 << 30)}:"
    pairs = []
    headers: dict[str, str] = {}
    for _ in range(2):
        store = RedisStore(redis_url, prefix=prefix)
        await store.open()
        svc = PoolService(store, ServiceConfig())
        await svc.start(background=False)
        headers = headers or await tenant_headers(svc)  # one tenant, its key good on both managers (one store)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(svc, "adm")), base_url="http://pool", timeout=30,
            headers=headers,
        )
        pairs.append((svc, client))
    yield pairs
    for svc, client in pairs:
        await client.aclose()
        await svc.stop()
        await svc.store.close()


async def audit(svc: PoolService) -> dict[tuple[str, int], int]:
    """Bookings per GPU as the store keeps them; asserts they equal the sum over active leases and fit."""
    nodes = await svc.store.list_nodes()
    booked = {(n.node_id, g): b for n in nodes for g, b in n.reserved.items() if b}
    held: dict[tuple[str, int], int] = defaultdict(int)
    for lease in await svc.store.list_leases():
        for a in lease.allocs:
            held[(lease.node_id, a.gpu)] += a.vram_bytes
    assert booked == dict(held)
    caps = {(n.node_id, g.index): g.total_bytes for n in nodes for g in n.gpus}
    assert all(b <= caps[k] for k, b in booked.items()), "over-booked GPU"
    return booked


async def test_two_pool_managers_never_double_book(two_managers: list[tuple[PoolService, httpx.AsyncClient]]) -> None:
    (svc_a, api_a), (svc_b, api_b) = two_managers
    for i in range(NODES):
        await (svc_a if i % 2 else svc_b).register_node(
            f"n{i}", [f"tcp://n{i}:7100"], "sim", "", gpus(*[GPU_GIB] * GPUS_PER_NODE)
        )

    async def ask(api: httpx.AsyncClient) -> httpx.Response:
        return await api.post("/v1/leases", json={"vram_bytes": LEASE_GIB * GiB})

    requests = 3 * SLOTS
    responses = await asyncio.gather(*(ask(api_a if i % 2 else api_b) for i in range(requests)))
    created = [r.json() for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 503]
    assert len(created) == SLOTS and len(refused) == requests - SLOTS
    assert all(r.json()["error"] == "no_capacity" and r.headers["Retry-After"] for r in refused)
    assert len({c["lease_id"] for c in created}) == SLOTS
    # The race was real: both managers chose from stale snapshots and the store refused the losers.
    conflicts = sum(s.metrics.placement_conflicts._value.get() for s in (svc_a, svc_b))
    assert conflicts > 0
    booked = await audit(svc_a)
    assert sum(booked.values()) == SLOTS * LEASE_GIB * GiB

    # Both managers race to end every lease (owner release through A, operator eviction through B).
    async def release(c: dict[str, str]) -> int:
        r = await api_a.delete(f"/v1/leases/{c['lease_id']}")
        return r.status_code

    async def evict(c: dict[str, str]) -> int:
        r = await api_b.post(f"/v1/admin/leases/{c['lease_id']}/evict", headers={"Authorization": "Bearer adm"})
        return r.status_code

    codes = await asyncio.gather(*(f(c) for c in created for f in (release, evict)))
    pairs = list(zip(codes[::2], codes[1::2], strict=True))
    assert all(sorted(p) == [200, 409] for p in pairs), pairs
    assert await audit(svc_b) == {}
    assert await svc_a.list_leases() == []
    ended = await svc_b.list_leases(include_ended=True)
    assert len(ended) == SLOTS and {x.state.value for x in ended} <= {"released", "evicted"}
