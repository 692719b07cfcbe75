"""The REST API: status codes, JSON error bodies with reasons, Retry-After, token checks, admin endpoints,
OpenAPI and metrics. Runs the FastAPI app in-process (httpx's ASGI transport) on both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import FakeClock, GiB, gpus, tenant_headers

from fargpu.pool_manager.api import create_app
from fargpu.pool_manager.service import PoolService

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
async def api(service: PoolService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, admin_token="admin-secret")
    headers = await tenant_headers(service)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pool", headers=headers
    ) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(r: httpx.Response, status: int, code: str, reason_part: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and reason_part in body["reason"], body


async def test_lease_create_get_renew_release(api: httpx.AsyncClient, service: PoolService, clock: FakeClock) -> None:
    await service.register_node("n1", ["tcp://10.0.0.5:7100"], "sim", "", gpus(16))
    r = await api.post("/v1/leases", json={"vram": "8G", "ttl_s": 60, "qos": "guaranteed", "label": "me"})
    assert r.status_code == 201, r.text
    lease = r.json()
    assert lease["endpoints"] == ["tcp://10.0.0.5:7100"] and lease["vram_bytes"] == 8 * GiB
    assert lease["token"].startswith("fgt_") and lease["expires_at"] == clock() + 60
    lid = lease["lease_id"]
    got = (await api.get(f"/v1/leases/{lid}")).json()
    assert got["state"] == "active" and "token" not in got and "token_hash" not in got
    clock.advance(30)
    r = await api.post(f"/v1/leases/{lid}/renew", json={"ttl_s": 120})
    assert r.status_code == 200 and r.json()["expires_at"] == clock() + 120
    assert [x["lease_id"] for x in (await api.get("/v1/leases")).json()] == [lid]
    r = await api.delete(f"/v1/leases/{lid}")
    assert r.status_code == 200 and r.json()["state"] == "released"
    assert_error(await api.delete(f"/v1/leases/{lid}"), 409, "conflict", "released by its owner")
    r = await api.post(f"/v1/leases/{lid}/renew")
    assert_error(r, 409, "conflict", "has ended (released)")
    assert (await api.get("/v1/leases")).json() == []
    assert [x["state"] for x in (await api.get("/v1/leases", params={"include_ended": "true"})).json()] == ["released"]


async def test_bad_input_is_400_or_422(api: httpx.AsyncClient) -> None:
    assert_error(await api.post("/v1/leases", json={"vram": "lots"}), 400, "bad_request", "not a size")
    assert_error(await api.post("/v1/leases", json={}), 400, "bad_request", "exactly one of vram_bytes or vram")
    assert_error(await api.post("/v1/leases", json={"vram_bytes": 1, "vram": "1G"}), 400, "bad_request")
    assert_error(await api.post("/v1/leases", json={"vram_bytes": -5}), 422, "invalid_request", "vram_bytes")
    assert_error(await api.post("/v1/leases", json={"vram": "1G", "gpus": 0}), 422, "invalid_request", "gpus")
    assert_error(await api.post("/v1/leases", json={"vram": "1G", "qos": "vip"}), 422, "invalid_request", "qos")
    assert_error(await api.post("/v1/leases", json={"vram": "1G", "color": "red"}), 422, "invalid_request", "color")
    r = await api.post("/v1/leases", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_request")
    assert_error(await api.post("/v1/leases", json={"vram": "1G", "ttl_s": 10**7}), 400, "bad_request", "ttl_s")


async def test_no_capacity_is_503_with_retry_after(api: httpx.AsyncClient, service: PoolService) -> None:
    r = await api.post("/v1/leases", json={"vram": "1G"})
    assert_error(r, 503, "no_capacity", "no node is up")
    # with no node ever registered and no provider, the reason says how to get one
    assert "--provider local" in r.json()["reason"] and "fargpu server --pool" in r.json()["reason"]
    assert r.headers["Retry-After"] == "5"
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(8))
    assert (await api.post("/v1/leases", json={"vram": "8G", "ttl_s": 42})).status_code == 201
    r = await api.post("/v1/leases", json={"vram": "1G", "wait_s": 0.05})
    assert_error(r, 503, "no_capacity", "waited 0.05s")
    assert r.headers["Retry-After"] == "42"


async def test_keys_required_and_tenants_see_only_their_own(api: httpx.AsyncClient, service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(8))
    a = (await api.post("/v1/leases", json={"vram": "1G"})).json()
    assert a["tenant"] == "t1"
    other = await tenant_headers(service, "t2")
    b = (await api.post("/v1/leases", json={"vram": "1G"}, headers=other)).json()
    assert b["tenant"] == "t2"
    anon = {"Authorization": ""}
    for method, path in (("POST", "/v1/leases"), ("GET", "/v1/leases"), ("GET", f"/v1/leases/{a['lease_id']}"),
                         ("POST", f"/v1/leases/{a['lease_id']}/renew"), ("DELETE", f"/v1/leases/{a['lease_id']}"),
                         ("GET", "/v1/sessions"), ("GET", "/v1/nodes"), ("GET", "/v1/status")):  # fmt: skip
        r = await api.request(method, path, headers=anon, json={"vram": "1G"} if method == "POST" else None)
        assert_error(r, 401, "unauthorized", "API key")
        assert r.headers["WWW-Authenticate"] == "Bearer"
    # A lease token is no API key.
    assert_error(await api.get("/v1/leases", headers=bearer(a["token"])), 401, "unauthorized", "invalid API key")
    # Another tenant's lease is "not found" to t2, whatever it tries; its own listing holds only its own lease.
    for method, path in (("GET", ""), ("POST", "/renew"), ("DELETE", "")):
        r = await api.request(method, f"/v1/leases/{a['lease_id']}{path}", headers=other)
        assert_error(r, 404, "not_found")
    assert [x["lease_id"] for x in (await api.get("/v1/leases", headers=other)).json()] == [b["lease_id"]]
    assert [x["lease_id"] for x in (await api.get("/v1/leases")).json()] == [a["lease_id"]]
    assert {x["lease_id"] for x in (await api.get("/v1/leases", headers=ADMIN)).json()} == {a["lease_id"],
                                                                                            b["lease_id"]}  # fmt: skip
    assert (await api.post(f"/v1/leases/{a['lease_id']}/renew")).status_code == 200
    assert (await api.delete(f"/v1/leases/{b['lease_id']}", headers=ADMIN)).status_code == 200  # admin may
    assert_error(await api.get("/v1/leases/lease-unknown"), 404, "not_found", "lease-unknown")


async def test_admin_endpoints(api: httpx.AsyncClient, service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(8))
    lease = (await api.post("/v1/leases", json={"vram": "1G"})).json()
    evict = f"/v1/admin/leases/{lease['lease_id']}/evict"
    assert_error(await api.post(evict, headers={"Authorization": ""}), 401, "unauthorized", "admin token")
    assert_error(await api.post(evict), 403, "forbidden", "the key of tenant t1 is not an admin key")
    assert_error(await api.post(evict, headers=bearer(lease["token"])), 403, "forbidden", "wrong admin token")
    r = await api.post(evict, json={"reason": "maintenance"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "evicted"
    assert r.json()["end_reason"] == "evicted by an operator: maintenance"
    assert_error(await api.post(evict, headers=ADMIN), 409, "conflict")
    assert_error(await api.post("/v1/admin/leases/lease-x/evict", headers=ADMIN), 404, "not_found")
    assert_error(await api.post("/v1/admin/nodes/n1/drain", headers={"Authorization": ""}), 401, "unauthorized")
    r = await api.post("/v1/admin/nodes/n1/drain", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "draining"
    assert_error(await api.post("/v1/admin/nodes/nx/drain", headers=ADMIN), 404, "not_found")
    assert_error(await api.post("/v1/leases", json={"vram": "1G"}), 503, "no_capacity", "draining")


async def test_admin_disabled_without_admin_token(service: PoolService) -> None:
    app = create_app(service, admin_token=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pool") as api:
        r = await api.post("/v1/admin/nodes/n1/drain", headers=bearer("anything"))
        assert_error(r, 403, "forbidden", "admin API is disabled")


async def test_views_docs_metrics(api: httpx.AsyncClient, service: PoolService) -> None:
    await service.register_node("n1", ["tcp://n1:1"], "sim", "", gpus(8, 8))
    await api.post("/v1/leases", json={"vram": "2G", "gpus": 2})
    nodes = (await api.get("/v1/nodes")).json()
    assert nodes[0]["node_id"] == "n1" and nodes[0]["reserved"] == {"0": 2 * GiB, "1": 2 * GiB}
    assert (await api.get("/v1/nodes/n1")).json()["state"] == "up"
    assert_error(await api.get("/v1/nodes/zz"), 404, "not_found")
    assert (await api.get("/v1/sessions")).json() == []
    status = (await api.get("/v1/status")).json()
    assert status["nodes_up"] == 1 and status["leases_active"] == 1 and status["vram_reserved_bytes"] == 4 * GiB
    assert (await api.get("/docs")).status_code == 200
    schema = (await api.get("/openapi.json")).json()
    assert {"/v1/leases", "/v1/leases/{lease_id}/renew", "/v1/admin/nodes/{node_id}/drain"} <= set(schema["paths"])
    metrics = (await api.get("/metrics")).text
    assert 'fargpu_pool_node_vram_reserved_bytes{node="n1"} 4.294967296e+09' in metrics
    assert 'fargpu_pool_leases_active{qos="standard"} 1.0' in metrics
    assert 'fargpu_pool_placements_total{strategy="pack"} 1.0' in metrics
    assert "fargpu_pool_node_heartbeat_age_seconds" in metrics
    await api.post("/v1/leases", json={"vram": "100G"})
    assert 'fargpu_pool_rejections_total{reason="no_capacity"} 1.0' in (await api.get("/metrics")).text
    assert_error(await api.get("/v2/nope"), 404, "not_found")
