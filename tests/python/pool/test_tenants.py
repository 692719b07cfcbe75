"""Tenants, API keys and the control-plane rules of the trust layer, on both stores: keys kept as hashes only,
quotas enforced atomically with the booking, revocation, admin keys; the store being down (503 JSON, /healthz);
the re-adoption window after a restart or a store outage; leases that end with their last session; placement that
leaves out nodes not heard from and nodes the client could not reach."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import FakeClock, GiB, StoreKit, free_port, gpus, tenant_headers

from fargpu.pool_manager.api import create_app
from fargpu.pool_manager.errors import QuotaExceeded
from fargpu.pool_manager.models import LeaseState, SessionInfo
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest, ServiceConfig
from fargpu.pool_manager.store import Store
from fargpu.pool_manager.store_redis import RedisStore
from fargpu.pool_manager.tenants import Principal, find_api_key, load_or_create_local_key

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
async def api(service: PoolService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, admin_token="admin-secret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pool") as client:
        yield client


def session(sid: str, lease_id: str, node: str = "n1") -> SessionInfo:
    return SessionInfo(session_id=sid, lease_id=lease_id, node_id=node, pid=1, vram_used_bytes=0, client="c")


async def test_keys_are_stored_as_hashes_and_revocation_is_immediate(
    api: httpx.AsyncClient, service: PoolService, store_kit: StoreKit
) -> None:
    assert (await api.put("/v1/admin/tenants/acme", json={"vram_quota": "4G", "max_leases": 2},
                          headers=ADMIN)).status_code == 200  # fmt: skip
    r = await api.post("/v1/admin/keys", json={"tenant": "acme", "label": "ci"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    me = (await api.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})).json()
    assert me == {"tenant": "acme", "admin": False, "key_id": created["key_id"]}
    # Nowhere in the store is the key itself: not in Redis, not in the embedded store's files.
    if store_kit.kind == "redis":
        assert store_kit.redis_url is not None
        r2 = aioredis.from_url(store_kit.redis_url, decode_responses=True)
        dump = ""
        async for k in r2.scan_iter(store_kit.prefix + "*"):
            t = await r2.type(k)
            dump += json.dumps(await r2.hgetall(k)) if t == "hash" else str(await r2.get(k)) if t == "string" else ""
        await r2.aclose()
    else:
        dump = "".join(p.read_text() for p in store_kit.tmp.glob("pool-state.json*") if p.is_file())
    assert created["key_id"] in dump and key not in dump
    listed = (await api.get("/v1/admin/keys", headers=ADMIN)).json()
    assert [k["key_id"] for k in listed] == [created["key_id"]] and "key" not in listed[0]
    # A tenant key cannot manage tenants; an admin key made through the API can.
    assert (await api.get("/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"})).status_code == 403
    admin_key = (await api.post("/v1/admin/keys", json={"admin": True}, headers=ADMIN)).json()["key"]
    tenants = (await api.get("/v1/admin/tenants", headers={"Authorization": f"Bearer {admin_key}"})).json()
    assert [t["name"] for t in tenants] == ["acme"] and tenants[0]["vram_quota_bytes"] == 4 * GiB
    # Revoked: refused at once.
    assert (await api.delete(f"/v1/admin/keys/{created['key_id']}", headers=ADMIN)).json()["revoked_at"]
    r = await api.get("/v1/leases", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401 and "revoked" in r.json()["reason"]


async def test_tenant_quota_is_its_own_and_revoking_a_tenant_evicts_its_leases(
    api: httpx.AsyncClient, service: PoolService
) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(16))
    acme = await tenant_headers(service, "acme", vram_quota_bytes=3 * GiB, max_leases=2)
    other = await tenant_headers(service, "other")
    a = (await api.post("/v1/leases", json={"vram": "2G"}, headers=acme)).json()
    r = await api.post("/v1/leases", json={"vram": "2G"}, headers=acme)  # 4 G > 3 G
    assert r.status_code == 403 and r.json()["error"] == "quota_exceeded" and "acme" in r.json()["reason"], r.text
    assert (await api.post("/v1/leases", json={"vram": "1G"}, headers=acme)).status_code == 201
    r = await api.post("/v1/leases", json={"vram": "1M", "wait_s": 5}, headers=acme)  # 3 leases > 2: no queueing
    assert r.status_code == 403 and "2 of its 2 active leases" in r.json()["reason"]
    # Another tenant's room is its own: 12 G more fit the node.
    assert (await api.post("/v1/leases", json={"vram": "12G"}, headers=other)).status_code == 201
    assert await service.store.tenant_usage("acme") == (3 * GiB, 2)
    assert (await api.delete(f"/v1/leases/{a['lease_id']}", headers=acme)).status_code == 200
    assert await service.store.tenant_usage("acme") == (1 * GiB, 1)
    assert (await api.post("/v1/leases", json={"vram": "2G"}, headers=acme)).status_code == 201
    # Revoking the tenant: keys refused, leases evicted, usage back to nothing.
    t = (await api.delete("/v1/admin/tenants/acme", headers=ADMIN)).json()
    assert t["disabled"] and t["leases_active"] == 0 and t["vram_booked_bytes"] == 0
    assert (await api.get("/v1/leases", headers=acme)).status_code == 401
    ended = [x for x in (await api.get("/v1/leases?include_ended=true", headers=ADMIN)).json() if x["tenant"] == "acme"]
    assert ended and all(x["state"] != "active" for x in ended)
    assert any(x["end_reason"] == "evicted by an operator: tenant acme was revoked" for x in ended)


async def test_quota_holds_under_concurrent_requests(service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(64))
    await service.put_tenant("acme", 5 * GiB, None)
    me = Principal("acme")

    async def one() -> bool:
        try:
            await service.create_lease(LeaseRequest(vram_bytes=GiB), me)
            return True
        except QuotaExceeded:
            return False

    results = await asyncio.gather(*(one() for _ in range(20)))
    assert sum(results) == 5 and await service.store.tenant_usage("acme") == (5 * GiB, 5)


async def test_store_down_is_503_json_and_healthz_says_so() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="down:")  # nothing listens: Redis is down
    svc = PoolService(store, ServiceConfig(adopt_grace_s=30))
    app = create_app(svc, admin_token="admin-secret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pool") as api:
        r = await api.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable" and "redis" in r.json()["reason"]
        for method, path in (("POST", "/v1/leases"), ("GET", "/v1/leases"), ("GET", "/v1/status")):
            r = await api.request(method, path, json={"vram": "1G"} if method == "POST" else None,
                                  headers={"Authorization": "Bearer fgk_whatever"})  # fmt: skip
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["error"] == "store_unavailable" and "store is unavailable" in body["reason"]
            assert r.headers["Retry-After"] == "5"
        assert svc.adopting  # nothing may expire for silence once it is back
    await store.close()


async def test_readoption_after_a_long_outage(store_kit: StoreKit, clock: FakeClock) -> None:
    store = await store_kit.new()
    cfg = ServiceConfig(heartbeat_timeout_s=10, adopt_grace_s=10)
    svc = PoolService(store, cfg, clock=clock)
    await svc.start(background=False)
    await svc.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(16))
    used, _ = await svc.create_lease(LeaseRequest(vram_bytes=GiB, ttl_s=30))
    idle, _ = await svc.create_lease(LeaseRequest(vram_bytes=GiB, ttl_s=30))
    await svc.stop()
    clock.advance(3600)  # the pool manager is away for an hour, far past TTLs and heartbeat timeouts
    svc = PoolService(await store_kit.reopen(store), cfg, clock=clock)
    await svc.start(background=False)
    await svc.sweep_once()  # in the window: nothing ends
    assert (await svc.get_lease(used.lease_id)).state == LeaseState.active
    assert (await svc.get_node("n1")).state.value == "up"
    clock.advance(2)
    known, stale = await svc.node_heartbeat("n1", gpus(16), [session("s1", used.lease_id)])
    assert known and stale == []
    assert (await svc.get_lease(used.lease_id)).expires_at == clock() + 30  # re-adopted
    # The client renews a lease whose expiry passed during the outage: it succeeds in the window.
    assert (await svc.renew_lease(idle.lease_id)).state == LeaseState.active
    clock.advance(9)  # the window is over
    await svc.node_heartbeat("n1", gpus(16), [session("s1", used.lease_id)])
    await svc.sweep_once()
    assert (await svc.get_lease(used.lease_id)).state == LeaseState.active
    clock.advance(20)  # nobody renews the idle one, nor reports it; the used one is still renewed by its client
    await svc.renew_lease(used.lease_id)
    clock.advance(11)
    await svc.node_heartbeat("n1", gpus(16), [session("s1", used.lease_id)])
    await svc.sweep_once()
    assert (await svc.get_lease(idle.lease_id)).state == LeaseState.expired
    assert (await svc.get_lease(used.lease_id)).state == LeaseState.active
    await svc.stop()


async def test_lease_ends_with_its_last_session(service: PoolService, clock: FakeClock) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(16))
    own, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB, end_with_sessions=True))
    plain, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
    await service.node_heartbeat("n1", gpus(16), [])  # not connected yet: nothing ends
    assert (await service.get_lease(own.lease_id)).state == LeaseState.active
    both = [session("s1", own.lease_id), session("s2", own.lease_id), session("s3", plain.lease_id)]
    await service.node_heartbeat("n1", gpus(16), both)
    assert (await service.get_lease(own.lease_id)).sessions_seen
    await service.node_heartbeat("n1", gpus(16), both[1:])  # one of two ended: still in use
    assert (await service.get_lease(own.lease_id)).state == LeaseState.active
    await service.node_heartbeat("n1", gpus(16), [])
    assert (await service.get_lease(own.lease_id)).state == LeaseState.active  # not for end_grace_s (1 s) yet
    clock.advance(1.0)
    await service.node_heartbeat("n1", gpus(16), [])
    ended = await service.get_lease(own.lease_id)
    assert ended.state == LeaseState.released and ended.end_reason == "its last session ended"
    assert (await service.get_lease(plain.lease_id)).state == LeaseState.active
    # A parked session's worker is gone, and later its report too; the client resumes it: the lease stays.
    parked, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB, end_with_sessions=True))
    await service.node_heartbeat("n1", gpus(16), [session("s4", parked.lease_id)])
    gone = session("s4", parked.lease_id).model_copy(update={"state": "parked"})
    await service.node_heartbeat("n1", gpus(16), [gone])
    await service.node_heartbeat("n1", gpus(16), [])
    clock.advance(2.0)
    await service.node_heartbeat("n1", gpus(16), [])
    assert (await service.get_lease(parked.lease_id)).state == LeaseState.active


async def test_silent_and_avoided_nodes_are_left_out_of_placement(store: Store, clock: FakeClock) -> None:
    svc = PoolService(store, ServiceConfig(stale_after_s=1.5), clock=clock)
    await svc.start(background=False)
    await svc.register_node("a", ["tcp://a:1"], "sim", "", gpus(16))
    await svc.register_node("b", ["tcp://b:1"], "sim", "", gpus(16))
    clock.advance(1.0)
    await svc.node_heartbeat("b", gpus(16), [])
    clock.advance(1.0)  # a: 2 s silent, b: 1 s
    lease, _ = await svc.create_lease(LeaseRequest(vram_bytes=GiB))
    assert lease.node_id == "b"  # packing would pick "a" (ties break on id), but it is silent
    lease, _ = await svc.create_lease(LeaseRequest(vram_bytes=GiB, avoid_nodes=("b",)))
    assert lease.node_id == "a"  # the only other node: a late one is better than none
    await svc.node_heartbeat("a", gpus(16), [])
    lease, _ = await svc.create_lease(LeaseRequest(vram_bytes=GiB, avoid_nodes=("a",)))
    assert lease.node_id == "b"
    await svc.stop()


def test_local_key_file_is_private_and_clients_refuse_a_readable_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "api-key"
    key = load_or_create_local_key(path)
    assert (path.stat().st_mode & 0o777) == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    assert load_or_create_local_key(path) == key  # made once, never overwritten
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        load_or_create_local_key(path)
    monkeypatch.delenv("FARGPU_API_KEY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "fargpu").mkdir()
    readable = tmp_path / "fargpu" / "api-key"
    readable.write_text(key)
    readable.chmod(0o644)
    assert find_api_key() is None  # anyone on the machine could have read it
    readable.chmod(0o600)
    assert find_api_key() == key


async def test_tenants_keys_and_usage_survive_a_restart(store_kit: StoreKit, clock: FakeClock) -> None:
    store = await store_kit.new()
    svc = PoolService(store, ServiceConfig(), clock=clock)
    await svc.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(16))
    await svc.put_tenant("acme", 4 * GiB, 3)
    _, key = await svc.create_api_key("acme")
    revoked, old = await svc.create_api_key("acme")
    await svc.revoke_api_key(revoked.key_id)
    await svc.create_lease(LeaseRequest(vram_bytes=GiB), Principal("acme"))
    svc = PoolService(await store_kit.reopen(store), ServiceConfig(), clock=clock)
    me = await svc.authenticate_key(key)
    assert me is not None and (me.tenant, me.admin) == ("acme", False) and me.key_id != revoked.key_id
    assert await svc.authenticate_key(old) is None
    assert (await svc.tenant("acme")).max_leases == 3
    assert await svc.store.tenant_usage("acme") == (GiB, 1)  # recomputed (embedded) or kept (Redis)
