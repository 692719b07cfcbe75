"""The node side of gRPC against a real pool manager: PoolLink registers a (fake) node agent, heartbeats its
devices and sessions, carries evict and drain commands to the agent, survives a pool-manager restart, and
LeaseTokenAuth admits exactly the tokens of leases placed on this node, with their VRAM quota. Also: a node
that stops heartbeating is marked down and its leases end with a readable reason; node metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from conftest import eventually, fast, free_port, key_headers, pm_config
from fakes import FakeAgent, GiB

from fargpu.pool_manager.server import PoolManager
from fargpu.server.auth import AuthError
from fargpu.server.metrics import NodeMetrics
from fargpu.server.pool_link import LeaseTokenAuth, PoolLink, endpoint_url

ADMIN = {"Authorization": "Bearer admin-secret"}


async def test_link_registers_heartbeats_and_carries_commands(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    agent = FakeAgent(gpu_gib=(16, 24))
    async with PoolManager(pm_config(**fast())) as pm, httpx.AsyncClient(
        base_url=pm.rest_url, headers=key_headers()
    ) as api:
        link = PoolLink(
            agent,
            pm.rest_url,
            auth=LeaseTokenAuth(cache_ttl_s=0),
            node_id="node-a",
            retry_s=0.05,
            enrol_token=pm.enrol_token,
        )
        await link.start()
        try:
            assert link.registered.is_set()
            node = (await api.get("/v1/nodes/node-a")).json()
            assert node["endpoints"] == ["tcp://127.0.0.1:7100"] and node["backend"] == "sim"
            assert [g["total_bytes"] for g in node["gpus"]] == [16 * GiB, 24 * GiB]

            r = await api.post("/v1/leases", json={"vram": "20G"})
            assert r.status_code == 201
            lease = r.json()
            assert lease["node_id"] == "node-a" and lease["allocs"] == [{"gpu": 1, "vram_bytes": 20 * GiB}]
            grant = await link.auth.authenticate(lease["token"])
            assert grant.lease_id == lease["lease_id"] and grant.vram_quota_bytes == 20 * GiB
            assert grant.expires_at == pytest.approx(lease["expires_at"])
            assert grant.max_sessions == 16  # the pool's default max_sessions_per_lease
            with pytest.raises(AuthError, match="unknown lease token"):
                await link.auth.authenticate(lease["token"] + "x")
            with pytest.raises(AuthError, match="no lease token"):
                await link.auth.authenticate("")

            agent.add_session("s1", lease["lease_id"], 3 * GiB)

            async def session_seen() -> bool:
                sessions = (await api.get("/v1/sessions")).json()
                return [s["session_id"] for s in sessions] == ["s1"]

            await eventually(session_seen)
            node = (await api.get("/v1/nodes/node-a")).json()
            assert node["gpus"][0]["free_bytes"] == 13 * GiB and node["gpus"][0]["utilization_pct"] == 37.5

            r = await api.post(
                f"/v1/admin/leases/{lease['lease_id']}/evict", json={"reason": "fire drill"}, headers=ADMIN
            )
            assert r.status_code == 200
            await eventually(lambda: (lease["lease_id"], "evicted by an operator: fire drill") in agent.ended)
            with pytest.raises(AuthError, match="evicted by an operator: fire drill"):
                await link.auth.authenticate(lease["token"])
            await eventually(lambda: agent.sessions() == [])

            assert (await api.post("/v1/admin/nodes/node-a/drain", headers=ADMIN)).status_code == 200
            await eventually(lambda: agent.drained)
            assert link.draining
        finally:
            await link.stop()
        assert lease["token"] not in caplog.text  # tokens are never logged, on either side


async def test_token_of_another_node_is_refused() -> None:
    async with PoolManager(pm_config(**fast())) as pm, httpx.AsyncClient(
        base_url=pm.rest_url, headers=key_headers()
    ) as api:
        a, b = FakeAgent("127.0.0.1:7101", (8,)), FakeAgent("127.0.0.1:7102", (1,))
        link_a = PoolLink(a, pm.grpc_target, node_id="a", retry_s=0.05, enrol_token=pm.enrol_token)
        link_b = PoolLink(b, f"grpc://{pm.grpc_target}", node_id="b", retry_s=0.05, enrol_token=pm.enrol_token)
        await link_a.start()
        await link_b.start()
        try:
            lease = (await api.post("/v1/leases", json={"vram": "4G"})).json()
            assert lease["node_id"] == "a" and lease["endpoints"] == ["tcp://127.0.0.1:7101"]
            assert (await link_a.auth.authenticate(lease["token"])).lease_id == lease["lease_id"]
            with pytest.raises(AuthError, match="placed on node a, not on b"):
                await link_b.auth.authenticate(lease["token"])
        finally:
            await link_a.stop()
            await link_b.stop()


async def test_silent_node_goes_down_and_leases_end_with_reason() -> None:
    agent = FakeAgent()
    async with (
        PoolManager(pm_config(**fast(heartbeat_timeout_s=0.4))) as pm,
        httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api,
    ):
        link = PoolLink(agent, pm.rest_url, node_id="flaky", retry_s=0.05, enrol_token=pm.enrol_token)
        await link.start()
        lease = (await api.post("/v1/leases", json={"vram": "2G"})).json()
        await asyncio.sleep(0.6)  # heartbeats keep it up past the timeout
        assert (await api.get(f"/v1/leases/{lease['lease_id']}")).json()["state"] == "active"
        await link.stop()  # the node goes silent

        async def lost() -> bool:
            return bool((await api.get(f"/v1/leases/{lease['lease_id']}")).json()["state"] == "lost")

        await eventually(lost)
        got = (await api.get(f"/v1/leases/{lease['lease_id']}")).json()
        assert "node flaky stopped responding: no heartbeat for" in got["end_reason"]
        assert (await api.get("/v1/nodes/flaky")).json()["state"] == "down"
        r = await api.post(f"/v1/leases/{lease['lease_id']}/renew")
        assert r.status_code == 409 and "stopped responding" in r.json()["reason"]

        # The node comes back (a new link: its credential is the one it kept in its state directory).
        link = PoolLink(agent, pm.rest_url, node_id="flaky", retry_s=0.05, enrol_token=pm.enrol_token)
        await link.start()
        try:
            assert (await api.get("/v1/nodes/flaky")).json()["state"] == "up"
        finally:
            await link.stop()


async def test_link_and_leases_survive_pool_manager_restart(tmp_path: Path) -> None:
    ports = dict(port=free_port(), grpc_port=free_port())
    config = pm_config(**fast(state_file=tmp_path / "state.json", **ports))
    agent = FakeAgent()
    pm = PoolManager(config)
    await pm.start()
    link = PoolLink(
        agent,
        pm.rest_url,
        auth=LeaseTokenAuth(cache_ttl_s=0),
        node_id="n",
        retry_s=0.05,
        validate_timeout_s=0.3,
        enrol_token=pm.enrol_token,
    )
    await link.start()
    try:
        async with httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api:
            lease = (await api.post("/v1/leases", json={"vram": "2G"})).json()
        await pm.stop()
        with pytest.raises(AuthError, match="unreachable"):
            await link.auth.authenticate(lease["token"])  # no cached grant (cache_ttl_s=0 never served it)
        hb = link.last_heartbeat_ok
        pm = PoolManager(config)
        await pm.start()
        await eventually(lambda: link.last_heartbeat_ok != hb)  # the link reconnected by itself
        grant = await link.auth.authenticate(lease["token"])
        assert grant.lease_id == lease["lease_id"] and grant.vram_quota_bytes == 2 * GiB
        async with httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api:
            assert (await api.get(f"/v1/leases/{lease['lease_id']}")).json()["state"] == "active"
            assert (await api.get("/v1/nodes/n")).json()["state"] == "up"
    finally:
        await link.stop()
        await pm.stop()


async def test_grant_carries_the_pools_max_sessions_per_lease() -> None:
    async with PoolManager(pm_config(**fast(max_sessions_per_lease=3))) as pm:
        link = PoolLink(FakeAgent(), pm.grpc_target, node_id="n", retry_s=0.05, enrol_token=pm.enrol_token)
        await link.start()
        try:
            async with httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api:
                lease = (await api.post("/v1/leases", json={"vram": "1G"})).json()
            grant = await link.auth.authenticate(lease["token"])
            assert grant.lease_id == lease["lease_id"] and grant.max_sessions == 3
        finally:
            await link.stop()


async def test_a_node_told_the_grpc_target_needs_no_info_lookup() -> None:
    """`fargpu server --pool-grpc` (the local provider sets it): the link enrols and registers at the gRPC target it
    was given and never asks the REST URL's /v1/info, which here leads nowhere."""
    async with PoolManager(pm_config(**fast())) as pm:
        nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: a /v1/info lookup would fail
        link = PoolLink(FakeAgent(), nowhere, node_id="hinted", retry_s=0.05, enrol_token=pm.enrol_token,
                        grpc_target=pm.grpc_target)  # fmt: skip
        await link.start()
        try:
            assert link.registered.is_set()
            async with httpx.AsyncClient(base_url=pm.rest_url, headers=ADMIN) as api:
                assert (await api.get("/v1/nodes/hinted")).json()["state"] == "up"
        finally:
            await link.stop()
        unhinted = PoolLink(FakeAgent(), nowhere, node_id="unhinted", retry_s=0.05, enrol_token=pm.enrol_token)
        await unhinted.start(wait_registered_s=1.0)
        try:
            assert not unhinted.registered.is_set()  # the same URL without the target: no way to the pool
        finally:
            await unhinted.stop()


async def test_node_metrics() -> None:
    agent = FakeAgent(gpu_gib=(16,))
    agent.add_session("s1", "lease-1", 2 * GiB)
    metrics = NodeMetrics(agent)
    text = metrics.render().decode()
    assert f'fargpu_node_gpu_vram_total_bytes{{gpu="0"}} {float(16 * GiB)!r}'.replace("'", "") in text or (
        'fargpu_node_gpu_vram_total_bytes{gpu="0"} 1.7179869184e+10' in text
    )
    assert "fargpu_node_sessions 1.0" in text
    assert 'fargpu_node_session_vram_used_bytes{lease="lease-1",session="s1"} 2.147483648e+09' in text
    port = await metrics.serve("127.0.0.1", 0, interval_s=0.05)
    try:
        agent.add_session("s2", "lease-2", GiB)
        await asyncio.sleep(0.15)
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        assert "fargpu_node_sessions 2.0" in scraped and "fargpu_node_leases 2.0" in scraped
    finally:
        await metrics.stop()


def test_endpoint_url() -> None:
    assert endpoint_url("10.0.0.5:7100") == "tcp://10.0.0.5:7100"
    assert endpoint_url("/run/fargpu.sock") == "unix:///run/fargpu.sock"
    assert endpoint_url("tcp://h:1") == "tcp://h:1"
