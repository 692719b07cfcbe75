"""Scale to zero and back with the real local provider (node servers on the simulated device, real processes):
with no lease no node runs; a lease that arrives at zero nodes waits for the node the autoscaler starts and is
placed on it (the seconds from zero nodes to a placed lease are printed and bounded); once the lease is gone the
idle node is drained, its process stopped and the pool is at zero nodes again. And two pool managers on one Redis
racing to scale: exactly one holds the lock and starts a node; when it stops, the other takes over."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import eventually, fast, key_headers, pm_config

from fargpu.pool_manager.server import PoolManager


def scaling_config(tmp: Path, **kw: object) -> dict[str, object]:
    base = dict(
        **fast(heartbeat_timeout_s=3.0),
        provider="local",
        local_backend="sim",
        local_node_args=["--ctx-charge", "0"],
        local_log_dir=tmp / "nodes",
        enrol_token="enrol-scale",
        min_nodes=0,
        max_nodes=2,
        node_idle_s=1.0,
        scale_interval_s=0.1,
        scale_down_cooldown_s=0.0,
    )
    base.update(kw)
    return base


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] == "Z"


async def live_nodes(api: httpx.AsyncClient) -> list[str]:
    return [n["node_id"] for n in (await api.get("/v1/nodes")).json() if n["state"] != "down"]


async def live_nodes_at(api: httpx.AsyncClient, url: str) -> list[str]:
    return [n["node_id"] for n in (await api.get(url + "/v1/nodes")).json() if n["state"] != "down"]


async def test_scale_from_zero_and_back_to_zero(tmp_path: Path, store_args: dict[str, object]) -> None:
    async with PoolManager(pm_config(**scaling_config(tmp_path), **store_args)) as pm, httpx.AsyncClient(
        base_url=pm.rest_url, timeout=60, headers=key_headers()
    ) as api:
        await asyncio.sleep(0.5)  # a few autoscaler passes: no demand, no minimum
        assert await live_nodes(api) == [] and (await api.get("/v1/scaling")).json()["nodes"] == []
        for round_ in range(2):
            t0 = time.perf_counter()
            r = await api.post("/v1/leases", json={"vram": "128M"})  # no wait_s: it waits for the node anyway
            seconds = time.perf_counter() - t0
            assert r.status_code == 201, r.text
            lease = r.json()
            print(f"zero nodes -> lease placed (local provider, sim node, round {round_}): {seconds:.2f} s")
            assert lease["node_id"] == "local-0" and seconds < 30
            scaling = (await api.get("/v1/scaling")).json()
            assert scaling["provider"] == "local" and scaling["leader"] is True
            [node] = scaling["nodes"]
            assert node["node_id"] == "local-0" and node["provider_state"] == "running"
            pid = int(node["detail"].split()[1])
            metrics = (await api.get("/metrics")).text
            assert "fargpu_pool_autoscaler_leader 1.0" in metrics
            assert 'fargpu_pool_scale_events_total{action="start",reason="demand"}' in metrics
            await asyncio.sleep(1.5)
            assert await live_nodes(api) == ["local-0"]  # the lease holds it
            assert (await api.delete(f"/v1/leases/{lease['lease_id']}")).status_code == 200

            async def at_zero(pid: int = pid) -> bool:
                return await live_nodes(api) == [] and pid_gone(pid)

            await eventually(at_zero, 30)
            assert (await api.get("/v1/nodes")).json() == []  # stopped nodes are forgotten
            assert (await api.get("/v1/scaling")).json()["nodes"] == []


@pytest.mark.parametrize("max_nodes", [0])
async def test_no_room_and_no_node_to_come_fails_at_once(tmp_path: Path, max_nodes: int) -> None:
    async with PoolManager(pm_config(**scaling_config(tmp_path, max_nodes=max_nodes))) as pm, httpx.AsyncClient(
        base_url=pm.rest_url, timeout=60, headers=key_headers()
    ) as api:
        t0 = time.perf_counter()
        r = await api.post("/v1/leases", json={"vram": "128M"})
        assert r.status_code == 503 and time.perf_counter() - t0 < 5
        assert "no node is up" in r.json()["reason"]


async def test_two_pool_managers_race_to_scale(tmp_path: Path, redis_url: str) -> None:
    shared = dict(store="redis", redis_url=redis_url, redis_prefix=f"t{uuid.uuid4().hex[:10]}:")
    pm1 = PoolManager(pm_config(**scaling_config(tmp_path / "a", node_idle_s=60.0), **shared))
    pm2 = PoolManager(pm_config(**scaling_config(tmp_path / "b", node_idle_s=60.0), **shared))
    await asyncio.gather(pm1.start(), pm2.start())
    stopped: list[PoolManager] = []
    try:
        async with httpx.AsyncClient(timeout=60, headers=key_headers()) as api:
            # both ask for a lease at zero nodes at once, each through its own pool manager
            r1, r2 = await asyncio.gather(api.post(pm1.rest_url + "/v1/leases", json={"vram": "128M"}),
                                          api.post(pm2.rest_url + "/v1/leases", json={"vram": "128M"}))  # fmt: skip
            assert r1.status_code == 201 and r2.status_code == 201, (r1.text, r2.text)
            assert r1.json()["node_id"] == r2.json()["node_id"] == "local-0"
            scalers = [pm1.autoscaler, pm2.autoscaler]
            assert all(s is not None for s in scalers)
            leaders = [s for s in scalers if s is not None and s.leader]
            assert len(leaders) == 1
            started = [len(await s.provider.list()) for s in scalers if s is not None]
            assert sorted(started) == [0, 1]  # exactly one node, started by exactly one pool manager
            for _ in range(10):  # and it stays that way pass after pass
                await asyncio.sleep(0.1)
                assert sum(1 for s in scalers if s is not None and s.leader) == 1
            # the scaling pool manager stops (and its local node with it); the other takes over
            leader_pm = pm1 if pm1.autoscaler is leaders[0] else pm2
            other = pm2 if leader_pm is pm1 else pm1
            await leader_pm.stop()
            stopped.append(leader_pm)
            assert other.autoscaler is not None

            async def other_leads() -> bool:
                return other.autoscaler is not None and other.autoscaler.leader

            await eventually(other_leads, 15)

            async def dead_node_down() -> bool:  # the stopped node misses its heartbeats (3 s) and goes down
                return await live_nodes_at(api, other.rest_url) == []

            await eventually(dead_node_down, 15)
            r3 = await api.post(other.rest_url + "/v1/leases", json={"vram": "128M"})
            assert r3.status_code == 201, r3.text
            assert len(await other.autoscaler.provider.list()) == 1
    finally:
        for pm in (pm1, pm2):
            if pm not in stopped:
                await pm.stop()
