"""A small asynchronous client of the pool manager's REST API, used by `fargpu run` and `fargpu pool ...`.

It returns the API's JSON as dicts and turns failures into two exceptions: `PoolUnreachable` (nothing answered
at that URL) and `PoolApiError` (the pool answered with an error; it carries status, code, reason and, for 503,
Retry-After). An https:// pool is verified against the pool's CA (FARGPU_TLS_CA, else this machine's development
CA: see tls.py); a TLS mismatch is said in one line.
Every call presents the API key: `api_key`, else the one `tenants.find_api_key` finds (FARGPU_API_KEY,
the config file, or this machine's local key file); admin calls present the admin token instead when one is given."""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from fargpu.pool_manager.tenants import find_api_key
from fargpu.pool_manager.tls import explain, verify_for

DEFAULT_POOL_URL = "http://127.0.0.1:7000"


def default_pool_url() -> str:
    return os.environ.get("FARGPU_POOL_URL") or DEFAULT_POOL_URL


class PoolUnreachable(Exception):
    def __init__(self, url: str, cause: Exception) -> None:
        detail = str(cause) or type(cause).__name__
        tls = explain(url, cause)  # a TLS mismatch or an unverifiable certificate: say that, in one line
        super().__init__(
            tls
            or f"cannot reach the pool manager at {url} ({detail}). Is it running? Start one with "
            "`fargpu pool-manager`, or point --pool / FARGPU_POOL_URL at it."
        )
        self.url = url


class PoolApiError(Exception):
    def __init__(self, status: int, code: str, reason: str, retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s


SCALE_UP_ALLOWANCE_S = 300.0  # the longest a lease request may wait for a node the pool starts, client side


class PoolClient:
    def __init__(
        self,
        base_url: str | None = None,
        *,
        admin_token: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = (base_url or default_pool_url()).rstrip("/")
        self._admin_token = admin_token
        self.api_key = find_api_key(api_key)
        self._timeout = timeout_s
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, verify=verify_for(self.base_url))

    async def __aenter__(self) -> PoolClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        token: str | None = None,
        timeout_s: float | httpx.Timeout | None = None,
    ) -> Any:
        token = token or self._admin_token or self.api_key  # with the admin token given, an admin sees it all
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = await self._http.request(
                method, path, json=json, params=params, headers=headers, timeout=timeout_s or self._timeout
            )
        except httpx.TransportError as e:  # built off the loop: it may probe the port for TLS (blocking)
            raise await asyncio.to_thread(PoolUnreachable, self.base_url, e) from e
        if r.status_code >= 400:
            try:
                body = r.json()
                code, reason = str(body.get("error", "error")), str(body.get("reason", r.text))
            except ValueError:
                code, reason = "error", r.text or r.reason_phrase
            retry = r.headers.get("Retry-After")
            raise PoolApiError(r.status_code, code, reason, int(retry) if retry and retry.isdigit() else None)
        return r.json()

    # --- leases ------------------------------------------------------------------------------------------
    async def create_lease(
        self,
        vram_bytes: int,
        gpus: int = 1,
        *,
        qos: str | None = None,
        ttl_s: float | None = None,
        wait_s: float = 0.0,
        label: str | None = None,
        strategy: str | None = None,
        idle_timeout_s: float | None = None,
        avoid_nodes: list[str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"vram_bytes": vram_bytes, "gpus": gpus, "wait_s": wait_s}
        if avoid_nodes:
            body["avoid_nodes"] = avoid_nodes
        optional = (
            ("qos", qos),
            ("ttl_s", ttl_s),
            ("label", label),
            ("strategy", strategy),
            ("idle_timeout_s", idle_timeout_s),
        )
        for key, value in optional:
            if value is not None:
                body[key] = value
        # A pool with a node provider may hold a request that finds no room while it starts a node (up to its
        # --scale-up-wait-s, 120 s by default) and answers 201 or 503 then: the read deadline leaves room for that.
        timeout = httpx.Timeout(self._timeout, read=self._timeout + max(wait_s, SCALE_UP_ALLOWANCE_S))
        result: dict[str, Any] = await self._call("POST", "/v1/leases", json=body, timeout_s=timeout)
        return result

    async def get_lease(self, lease_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/v1/leases/{lease_id}")
        return result

    async def renew_lease(self, lease_id: str, ttl_s: float | None = None) -> dict[str, Any]:
        body = {"ttl_s": ttl_s} if ttl_s is not None else None
        result: dict[str, Any] = await self._call("POST", f"/v1/leases/{lease_id}/renew", json=body)
        return result

    async def release_lease(self, lease_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("DELETE", f"/v1/leases/{lease_id}")
        return result

    # --- views and admin ---------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/v1/status")
        return result

    async def scaling(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/v1/scaling")
        return result

    async def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/v1/nodes")
        return result

    async def leases(self, include_ended: bool = False) -> list[dict[str, Any]]:
        params = {"include_ended": "true"} if include_ended else None
        result: list[dict[str, Any]] = await self._call("GET", "/v1/leases", params=params)
        return result

    async def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/v1/sessions")
        return result

    async def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/v1/whoami")
        return result

    def _admin(self) -> str | None:
        return self._admin_token

    # --- tenants and keys (admin) ------------------------------------------------------------------------
    async def tenants(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/v1/admin/tenants", token=self._admin())
        return result

    async def put_tenant(
        self, name: str, vram_quota: str | None = None, max_leases: int | None = None, disabled: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"disabled": disabled}
        if vram_quota is not None:
            body["vram_quota"] = vram_quota
        if max_leases is not None:
            body["max_leases"] = max_leases
        result: dict[str, Any] = await self._call(
            "PUT", f"/v1/admin/tenants/{quote(name, safe='')}", json=body, token=self._admin()
        )
        return result

    async def revoke_tenant(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/admin/tenants/{quote(name, safe='')}", token=self._admin()
        )
        return result

    async def create_key(self, tenant: str, *, admin: bool = False, label: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"tenant": tenant, "admin": admin}
        if label:
            body["label"] = label
        result: dict[str, Any] = await self._call("POST", "/v1/admin/keys", json=body, token=self._admin())
        return result

    async def keys(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", "/v1/admin/keys", token=self._admin())
        return result

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/admin/keys/{quote(key_id, safe='')}", token=self._admin()
        )
        return result

    async def drain(self, node_id: str, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/admin/nodes/{node_id}/drain", json=body, token=self._admin()
        )
        return result

    async def undrain(self, node_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/v1/admin/nodes/{node_id}/undrain", token=self._admin())
        return result

    async def evict(self, lease_id: str, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/admin/leases/{lease_id}/evict", json=body, token=self._admin()
        )
        return result

    async def page_out(self, session_id: str, to: str | None = None) -> dict[str, Any]:
        body = {"to": to} if to else None
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/admin/sessions/{quote(session_id, safe='')}/page-out", json=body, token=self._admin()
        )
        return result

    async def page_in(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/admin/sessions/{quote(session_id, safe='')}/page-in", token=self._admin()
        )
        return result
