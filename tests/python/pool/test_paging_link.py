"""Paging control between the pool and a node, with a fake node agent: the lease's QoS and idle timeout reach the
node's Grant; page-out and page-in commands reach the agent over real gRPC (embedded store and real Redis) and
their outcome comes back with the session; a slow page step does not hold up other commands; the REST admin
endpoints and their errors; `fargpu pool page-out|page-in --wait` when the node refuses or does not answer;
node and pool metrics of paging."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from conftest import FakeClock, ThreadedPool, eventually, fast, gpus, key_headers, pm_config, tenant_headers
from fakes import FakeAgent, GiB
from typer.testing import CliRunner

from fargpu.cli import app
from fargpu.pool_manager.api import create_app
from fargpu.pool_manager.models import SessionInfo
from fargpu.pool_manager.server import PoolManager
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest
from fargpu.protocol.generated import pool_pb2
from fargpu.server.metrics import NodeMetrics
from fargpu.server.pool_link import LeaseTokenAuth, PoolLink

ADMIN = {"Authorization": "Bearer admin-secret"}
runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture
async def linked(store_args: dict[str, object]) -> AsyncIterator[tuple[PoolManager, FakeAgent, PoolLink]]:
    """A pool manager (idle timeout default 120 s) and a fake node "n1" (16 GiB, its own overcommit 1.5)."""
    async with PoolManager(pm_config(**fast(default_idle_timeout_s=120.0, **store_args))) as pm:
        agent = FakeAgent("127.0.0.1:7100", (16,))
        link = PoolLink(agent, pm.grpc_target, auth=LeaseTokenAuth(cache_ttl_s=0), node_id="n1", retry_s=0.05,
                        enrol_token=pm.enrol_token, overcommit=1.5)  # fmt: skip
        await link.start()
        try:
            yield pm, agent, link
        finally:
            await link.stop()


async def session(api: httpx.AsyncClient, sid: str) -> dict[str, object]:
    found: list[dict[str, object]] = [s for s in (await api.get("/v1/sessions")).json() if s["session_id"] == sid]
    return found[0] if found else {}


async def test_lease_policy_and_page_commands_cross_the_link(linked: tuple[PoolManager, FakeAgent, PoolLink]) -> None:
    pm, agent, link = linked
    async with httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api:
        node = (await api.get("/v1/nodes/n1")).json()
        assert node["overcommit"] == 1.5
        other = (await api.post("/v1/leases", json={"vram": "1G", "qos": "guaranteed"})).json()
        grant = await link.auth.authenticate(other["token"])
        assert (grant.qos, grant.idle_timeout_s) == ("guaranteed", 120.0)  # the pool's default
        lease = (await api.post("/v1/leases", json={"vram": "12G", "qos": "best_effort", "idle_timeout_s": 7.5})).json()
        assert lease["node_id"] == "n1" and lease["idle_timeout_s"] == 7.5
        grant = await link.auth.authenticate(lease["token"])
        assert (grant.qos, grant.idle_timeout_s) == ("best_effort", 7.5)
        r = await api.post("/v1/leases", json={"vram": "11G"})
        assert r.status_code == 201, r.text  # 24 GiB booked on 16: the node's own ratio 1.5
        assert (await api.post("/v1/leases", json={"vram": "1M"})).status_code == 503

        agent.add_session("s1", lease["lease_id"], 3 * GiB)
        await eventually(lambda: session(api, "s1"))
        r = await api.post("/v1/admin/sessions/s1/page-out", json={"to": "disk"}, headers=ADMIN)
        assert r.status_code == 202, r.text
        out_id = r.json()["command_id"]
        await eventually(lambda: agent.paged == [("s1", "out:disk")])

        async def reported(command_id: str) -> bool:
            return (await session(api, "s1")).get("page_command_id") == command_id

        await eventually(lambda: reported(out_id))
        s = await session(api, "s1")
        assert s["state"] == "paged-disk" and s["paged_bytes"] == 3 * GiB and s["resident_bytes"] == 0
        assert s["page_result"] == f"paged disk {3 * GiB} 1000 0"

        r = await api.post("/v1/admin/sessions/s1/page-in", headers=ADMIN)
        assert r.status_code == 202 and r.json()["action"] == "page-in" and r.json()["to"] is None
        await eventually(lambda: reported(r.json()["command_id"]))
        s = await session(api, "s1")
        assert s["state"] == "resident" and s["paged_bytes"] == 0 and s["page_result"] == f"resident {3 * GiB} 1000"

        metrics = (await api.get("/metrics")).text
        assert 'fargpu_pool_node_vram_resident_bytes{node="n1"} 3.221225472e+09' in metrics
        assert 'fargpu_pool_node_overcommit_ratio{node="n1"} 1.5' in metrics


async def test_a_slow_page_step_does_not_hold_up_other_commands(
    linked: tuple[PoolManager, FakeAgent, PoolLink],
) -> None:
    pm, agent, link = linked
    agent.page_gate = asyncio.Event()
    async with httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api:
        lease = (await api.post("/v1/leases", json={"vram": "4G"})).json()
        agent.add_session("s1", lease["lease_id"], GiB)
        await eventually(lambda: session(api, "s1"))
        r = await api.post("/v1/admin/sessions/s1/page-out", headers=ADMIN)
        assert r.status_code == 202 and r.json()["to"] == "auto"
        await eventually(lambda: agent.paged == [("s1", "out:auto")])  # the step is running, and waits
        assert (await api.post(f"/v1/admin/leases/{lease['lease_id']}/evict", headers=ADMIN)).status_code == 200
        await eventually(lambda: lease["lease_id"] in {lid for lid, _ in agent.ended})
        agent.page_gate.set()
        await eventually(lambda: not link._page_tasks)


async def test_grant_leaves_the_idle_timeout_unset_when_the_pool_does_not_say() -> None:
    replies = [
        pool_pb2.ValidateTokenReply(valid=True, lease_id="l1", vram_quota_bytes=GiB),
        pool_pb2.ValidateTokenReply(valid=True, lease_id="l2", qos="standard", idle_timeout_s=0.0),
    ]

    async def validate(digest: bytes) -> pool_pb2.ValidateTokenReply:
        return replies.pop(0)

    auth = LeaseTokenAuth(cache_ttl_s=0)
    auth.bind(validate)
    old = await auth.authenticate("token-1")
    assert (old.qos, old.idle_timeout_s) == (None, None)  # an older pool: the node's --idle-page-out applies
    never = await auth.authenticate("token-2")
    assert (never.qos, never.idle_timeout_s) == ("standard", 0.0)  # 0 is "never", not "unset"


# --- REST, in-process on both stores ----------------------------------------------------------------------------
@pytest.fixture
async def api(service: PoolService) -> AsyncIterator[httpx.AsyncClient]:
    app_ = create_app(service, admin_token="admin-secret")
    headers = await tenant_headers(service)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app_), base_url="http://pool", headers=headers
    ) as client:
        yield client


async def test_rest_page_endpoints(api: httpx.AsyncClient, service: PoolService, clock: FakeClock) -> None:
    await service.register_node("n1", ["tcp://n1:7100"], "sim", "", gpus(16))
    lease = (await api.post("/v1/leases", json={"vram": "1G"})).json()
    assert lease["idle_timeout_s"] == 300.0
    s1 = SessionInfo(session_id="s1", lease_id=lease["lease_id"], node_id="n1", pid=1, vram_used_bytes=GiB,
                     client="c:1", state="resident", resident_bytes=GiB)  # fmt: skip
    assert await service.node_heartbeat("n1", gpus(16), [s1])

    r = await api.post("/v1/admin/sessions/s1/page-out", json={"to": "host"}, headers=ADMIN)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["session_id"], body["node_id"], body["action"], body["to"]) == ("s1", "n1", "page-out", "host")
    r = await api.post("/v1/admin/sessions/s1/page-in", headers=ADMIN)
    assert r.status_code == 202
    cmds = await service.store.take_commands("n1", 1.0)
    assert [(c.kind, c.session_id, c.to, c.command_id) for c in cmds] == [
        ("page_out", "s1", "host", body["command_id"]),
        ("page_in", "s1", "", r.json()["command_id"]),
    ]

    assert (await api.post("/v1/admin/sessions/s1/page-out", headers={"Authorization": ""})).status_code == 401
    assert (await api.post("/v1/admin/sessions/s1/page-out")).status_code == 403  # a tenant's key
    assert (await api.post("/v1/admin/sessions/s1/page-in", headers={"Authorization": "Bearer x"})).status_code == 403
    r = await api.post("/v1/admin/sessions/s1/page-out", json={"to": "floppy"}, headers=ADMIN)
    assert r.status_code == 422 and "to" in r.json()["reason"]
    r = await api.post("/v1/admin/sessions/nope/page-in", headers=ADMIN)
    assert r.status_code == 404 and r.json()["reason"] == "session 'nope' not found: no node reports it"
    clock.advance(11)  # past the heartbeat timeout, before the sweeper has marked the node down
    r = await api.post("/v1/admin/sessions/s1/page-out", headers=ADMIN)
    assert r.status_code == 409 and "has not heartbeated for 11s" in r.json()["reason"]
    assert await service.store.take_commands("n1", 0.01) == []  # refused commands are not queued

    r = await api.post("/v1/leases", json={"vram": "1G", "idle_timeout_s": -1})
    assert r.status_code == 422
    r = await api.post("/v1/leases", json={"vram": "1G", "idle_timeout_s": 0})
    assert r.status_code == 201 and r.json()["idle_timeout_s"] == 0.0


async def test_page_endpoints_need_an_admin_token_configured(service: PoolService) -> None:
    app_ = create_app(service, admin_token=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_), base_url="http://pool") as client:
        r = await client.post("/v1/admin/sessions/s1/page-out", headers=ADMIN)
        assert r.status_code == 403 and "disabled" in r.json()["reason"]


# --- the CLI when the node refuses or does not answer ----------------------------------------------------------
def test_cli_reports_a_refused_page_out_and_a_timeout(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool(**fast())
    assert tp.pm is not None
    agent = FakeAgent("127.0.0.1:7100", (16,))
    link = PoolLink(agent, tp.pm.grpc_target, node_id="n1", retry_s=0.05, enrol_token=tp.pm.enrol_token)
    tp.call(link.start())
    try:
        lease, _ = tp.call(tp.pm.service.create_lease(LeaseRequest(vram_bytes=GiB)))  # type: ignore[misc]
        agent.add_session("s1", lease.lease_id, GiB)
        agent.add_session("s2", lease.lease_id, GiB)
        pool = ["--pool", tp.url, "--admin-token", "admin-secret"]
        tp.call(wait_listed(tp, "s2"))

        # The node refuses: the session is still resident, the reason is the node's.
        agent.page_out = refuse  # type: ignore[method-assign]
        r = runner.invoke(app, ["pool", "page-out", "s1", "--to", "host", "--wait", "10", *pool, "--json"])
        assert r.exit_code == 1, r.output
        err = json.loads(r.stdout)
        assert err["error"] == "page_failed" and err["reason"] == "page-out of session s1: the host page pool is full"
        assert err["session"]["state"] == "resident"
        r = runner.invoke(app, ["pool", "page-out", "s1", "--wait", "10", *pool])
        assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and "the host page pool is full" in r.output

        # The node does not answer in time.
        agent.page_out = FakeAgent.page_out.__get__(agent)  # type: ignore[method-assign]
        agent.page_gate = asyncio.Event()
        r = runner.invoke(app, ["pool", "page-out", "s2", "--wait", "0.5", *pool, "--json"])
        assert r.exit_code == 1 and json.loads(r.stdout)["error"] == "timeout", r.output
        assert "did not report the outcome within 0.5s (the session is resident)" in json.loads(r.stdout)["reason"]
        tp.loop.call_soon_threadsafe(agent.page_gate.set)
    finally:
        tp.call(link.stop())


async def refuse(session_id: str, to: str = "auto") -> str:
    return "failed the host page pool is full"


async def wait_listed(tp: ThreadedPool, sid: str) -> None:
    assert tp.pm is not None
    pm = tp.pm

    async def listed() -> bool:
        return any(s.session_id == sid for s in await pm.service.list_sessions())

    await eventually(listed)


# --- metrics ---------------------------------------------------------------------------------------------------
def test_node_metrics_count_page_steps_through_the_pager_observer() -> None:
    agent = FakeAgent()
    seen: list[tuple[str, str, int, float]] = []
    agent.pager = types.SimpleNamespace(observer=lambda *a: seen.append(a))  # type: ignore[attr-defined]
    metrics = NodeMetrics(agent)
    assert 'fargpu_node_pageouts_total{where="host"}' not in metrics.render().decode()
    agent.pager.observer("pageout", "host", 64 << 20, 0.02)  # type: ignore[attr-defined]
    agent.pager.observer("pageout", "disk", 8 << 20, 0.5)  # type: ignore[attr-defined]
    agent.pager.observer("pagein", "host", 64 << 20, 0.01)  # type: ignore[attr-defined]
    assert seen == [("pageout", "host", 64 << 20, 0.02), ("pageout", "disk", 8 << 20, 0.5),
                    ("pagein", "host", 64 << 20, 0.01)]  # an observer that was there before still hears  # fmt: skip
    agent.add_session("s1", "lease-1", 3 * GiB)
    agent.add_session("s2", "lease-1", GiB)
    agent._set_state("s2", state="paged-host", paged_bytes=GiB, resident_bytes=0)
    text = metrics.render().decode()
    for line in (
        'fargpu_node_pageouts_total{where="host"} 1.0',
        'fargpu_node_pageouts_total{where="disk"} 1.0',
        'fargpu_node_pageins_total{where="host"} 1.0',
        'fargpu_node_pageout_bytes_sum{where="host"} 6.7108864e+07',
        'fargpu_node_pageout_seconds_count{where="disk"} 1.0',
        'fargpu_node_pagein_seconds_sum{where="host"} 0.01',
        "fargpu_node_vram_resident_bytes 3.221225472e+09",
        "fargpu_node_vram_paged_bytes 1.073741824e+09",
        'fargpu_node_sessions_by_paging_state{state="paged-host"} 1.0',
    ):
        assert line in text, line
    assert 'fargpu_node_pageins_total{where="disk"}' not in text
    NodeMetrics(FakeAgent()).render()  # an agent without a pager: no paging counters to feed, nothing fails
