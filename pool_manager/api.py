"""The pool manager's REST API (FastAPI; OpenAPI at /docs and /redoc, schema at /openapi.json), versioned under /v1.
Swagger UI's and ReDoc's assets are served from /static/docs (the `fastapi-offline` package ships them), so the
docs work with no internet access.

Every /v1 call except /v1/info needs an API key as `Authorization: Bearer fgk_...` (see tenants.py): a tenant's
key acts for that tenant only, an admin key (or the pool manager's admin token) for all. Leases: POST /v1/leases,
GET /v1/leases[/ID], POST /v1/leases/ID/renew, DELETE /v1/leases/ID; a tenant sees and touches only its own
leases (another tenant's lease id answers 404) and sessions (in /v1/sessions and in /v1/nodes). Read-only views:
/v1/nodes, /v1/sessions, /v1/status, /v1/whoami. Tenants and keys (admin): /v1/admin/tenants[/NAME],
/v1/admin/keys[/KEY_ID]. POST /v1/leases/ID/resume (the lease's client asks where its lease lives now; a parked
lease is placed on a node first) takes the owner's API key or the lease's own token (what a resuming stub holds).
GET /v1/scaling (provider, autoscaler, provider's nodes). Admin: POST /v1/admin/nodes/ID/drain and .../undrain,
POST /v1/admin/leases/ID/evict, POST /v1/admin/leases/ID/relocate, and POST /v1/admin/sessions/ID/page-out (body
`{"to": "auto|host|disk|deep"}`, optional) and .../page-in, which answer 202 with the id of the command queued for
the session's node (its outcome appears in /v1/sessions once the node has reported it), with the admin token; with
no admin token configured the admin endpoints refuse everyone.
Prometheus: /metrics.

Every error is JSON `{"error": code, "reason": readable text}`: 400 and 422 for bad input, 401 without a token,
403 with a key that may not do it (and `quota_exceeded` past the tenant's quota), 404 for unknown ids, 409 for
conflicts (e.g. renewing an ended lease, with the reason it ended), 503 with Retry-After when there is no capacity
or (`store_unavailable`) when the pool's store cannot be reached; /healthz then answers 503 with the reason."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fargpu import __version__
from fargpu.pool_manager.errors import BadRequest, Forbidden, NoCapacity, PoolError, StoreUnavailable, Unauthorized
from fargpu.pool_manager.metrics import CONTENT_TYPE
from fargpu.pool_manager.models import (
    ApiKeyCreated,
    ApiKeyView,
    LeaseCreated,
    LeaseView,
    NodeRecord,
    PageTarget,
    PoolStatus,
    QoS,
    SessionInfo,
    TenantRecord,
)
from fargpu.pool_manager.placement import Strategy
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest
from fargpu.pool_manager.tenants import ADMIN_TENANT, Principal, where_keys_are_looked_for
from fargpu.pool_manager.tokens import secret_matches, token_matches
from fargpu.pool_manager.units import parse_size


class LeaseRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vram_bytes: int | None = Field(None, gt=0, description="VRAM per GPU in bytes (or give `vram`)")
    vram: str | None = Field(None, description='VRAM per GPU as a size, e.g. "8G" (binary units)')
    gpus: int = Field(1, ge=1, le=64)
    qos: QoS = QoS.standard
    ttl_s: float | None = Field(None, gt=0, description="lease lifetime without renewal; pool default if absent")
    wait_s: float = Field(0.0, ge=0, description="wait up to this long for capacity instead of failing at once")
    label: str | None = Field(None, max_length=200, description="free text for operators (who, what)")
    strategy: Strategy | None = Field(None, description="placement: pack (default) or spread")
    idle_timeout_s: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="seconds a session may sit idle before its node pages it out (0: never); pool default if absent. "
        "Guaranteed leases are never paged.",
    )
    end_with_sessions: bool = Field(
        False, description="end the lease when its last session ends (a node reported one, then none)"
    )
    avoid_nodes: list[str] = Field(
        default_factory=list, max_length=64, description="nodes this client could not reach: place elsewhere"
    )


class TenantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vram_quota: str | None = Field(None, description='VRAM all its active leases may book, e.g. "64G"; none: no limit')
    max_leases: int | None = Field(None, ge=0, description="active leases it may hold at once; none: no limit")
    disabled: bool = False


class TenantView(TenantRecord):
    vram_booked_bytes: int = 0
    leases_active: int = 0


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field("", max_length=64, description="the tenant it acts for (empty with admin)")
    admin: bool = False
    label: str | None = Field(None, max_length=200)


class WhoAmI(BaseModel):
    tenant: str
    admin: bool
    key_id: str


class RenewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_s: float | None = Field(None, gt=0, description="new lifetime from now; the lease's TTL if absent")


class ResumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wait_s: float | None = Field(None, ge=0, le=3600, description="wait up to this long for a node; pool default")


class RelocateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node_id: str | None = Field(None, max_length=253, description="the node to move to; placement picks if absent")
    wait_s: float = Field(0.0, ge=0, le=3600, description="wait up to this long for room")


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500)


class PageOutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: PageTarget = Field(PageTarget.auto, description="host (the node's page pool), disk, auto (host, then disk), "
                          "or deep (auto, then the driver's process checkpoint)")


class PageCommandAccepted(BaseModel):
    command_id: str = Field(description="the node reports it back in the session's page_command_id when done")
    session_id: str
    node_id: str
    action: str = Field(description="page-out or page-in")
    to: PageTarget | None = Field(None, description="page-out only")


class ErrorBody(BaseModel):
    error: str
    reason: str


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 503)}

_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _who(request: Request, creds: Credentials) -> Principal:
    """The caller, from its API key (or the admin token). 401 without a key or with one the pool refuses."""
    service: PoolService = request.app.state.service
    admin_token: str | None = request.app.state.admin_token
    if creds is None or not creds.credentials:
        raise Unauthorized("this endpoint needs an API key (Authorization: Bearer fgk_...): clients read it from "
                           f"{where_keys_are_looked_for()}")  # fmt: skip
    if admin_token is not None and secret_matches(creds.credentials, admin_token):
        return Principal(ADMIN_TENANT, admin=True, key_id="admin-token")
    p = await service.authenticate_key(creds.credentials)
    if p is None:
        raise Unauthorized("invalid API key: it is unknown, revoked, or its tenant is disabled")
    return p


async def _require_admin(request: Request, creds: Credentials) -> Principal:
    service: PoolService = request.app.state.service
    admin_token: str | None = request.app.state.admin_token
    if creds is None or not creds.credentials:
        raise Unauthorized("this endpoint needs the admin token or an admin key (Authorization: Bearer ...)")
    if admin_token is not None and secret_matches(creds.credentials, admin_token):
        return Principal(ADMIN_TENANT, admin=True, key_id="admin-token")
    p = await service.authenticate_key(creds.credentials)
    if p is not None and p.admin:
        return p
    if admin_token is None and p is None:
        raise Forbidden("the admin API is disabled: the pool manager was started without an admin token, and "
                        "this is no admin key")  # fmt: skip
    raise Forbidden("wrong admin token" if p is None else f"the key of tenant {p.tenant} is not an admin key")


Who = Annotated[Principal, Depends(_who)]


def _error(status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status, headers=headers)


DOCS_ASSETS = "/static/docs"


def docs_assets_dir() -> Path:
    """Swagger UI's and ReDoc's JavaScript and CSS, as the `fastapi-offline` package ships them."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _mount_docs(app: FastAPI) -> None:
    """/docs and /redoc with every asset served from this pool manager (no CDN)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(service: PoolService, admin_token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="fargpu pool manager",
        version=__version__,
        description="Lease GPU capacity from the fargpu pool, and watch its nodes and sessions.",
        responses=_ERRORS,
        docs_url=None,
        redoc_url=None,
    )
    _mount_docs(app)

    @app.exception_handler(PoolError)
    async def _pool_error(_: Request, e: PoolError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after_s)} if isinstance(e, NoCapacity) else None
        if isinstance(e, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(e.status, e.code, e.reason, headers)

    @app.exception_handler(RedisError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    async def _store_down(_: Request, e: Exception) -> JSONResponse:
        service.store_trouble()
        err = StoreUnavailable(_store_reason(service, e))
        return _error(err.status, err.code, err.reason, {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()]
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail), dict(e.headers) if e.headers else None)

    app.state.service = service
    app.state.admin_token = admin_token
    admin = [Depends(_require_admin)]

    async def require_owner(lease_id: str, request: Request, creds: Credentials) -> None:
        """The lease's tenant (or an admin) by API key, or whoever holds the lease's own token."""
        if creds is not None and creds.credentials:
            lease = await service.store.get_lease(lease_id)
            if lease is not None and token_matches(creds.credentials, lease.token_hash):
                return
        await service.get_lease(lease_id, await _who(request, creds))  # 401 / 404 as for the other lease calls

    owner = [Depends(require_owner)]

    @app.post("/v1/leases", status_code=201, response_model=LeaseCreated, tags=["leases"])
    async def create_lease(body: LeaseRequestBody, me: Who) -> LeaseCreated:
        """Leases GPU capacity. Returns the lease with its secret token and the node endpoint(s) to connect to."""
        if (body.vram_bytes is None) == (body.vram is None):
            raise BadRequest("give exactly one of vram_bytes or vram")
        if body.vram is not None:
            try:
                vram = parse_size(body.vram)
            except ValueError as e:
                raise BadRequest(str(e)) from None
        else:
            assert body.vram_bytes is not None
            vram = body.vram_bytes
        lease, token = await service.create_lease(
            LeaseRequest(
                vram, body.gpus, body.qos, body.ttl_s, body.wait_s, body.label, body.strategy, body.idle_timeout_s,
                body.end_with_sessions, tuple(body.avoid_nodes),
            ),
            me,
        )
        return LeaseCreated(**lease.view().model_dump(), token=token)

    @app.get("/v1/leases", response_model=list[LeaseView], tags=["leases"])
    async def list_leases(me: Who, include_ended: bool = False) -> list[LeaseView]:
        return [lease.view() for lease in await service.list_leases(include_ended, me)]

    @app.get("/v1/leases/{lease_id}", response_model=LeaseView, tags=["leases"])
    async def get_lease(lease_id: str, me: Who) -> LeaseView:
        return (await service.get_lease(lease_id, me)).view()

    @app.post("/v1/leases/{lease_id}/renew", response_model=LeaseView, tags=["leases"])
    async def renew_lease(lease_id: str, me: Who, body: RenewBody | None = None) -> LeaseView:
        return (await service.renew_lease(lease_id, body.ttl_s if body else None, me)).view()

    @app.delete("/v1/leases/{lease_id}", response_model=LeaseView, tags=["leases"])
    async def release_lease(lease_id: str, me: Who) -> LeaseView:
        return (await service.release_lease(lease_id, me)).view()

    @app.post("/v1/leases/{lease_id}/resume", response_model=LeaseView, tags=["leases"], dependencies=owner)
    async def resume_lease(lease_id: str, body: ResumeBody | None = None) -> LeaseView:
        """Where the lease's client connects now. A lease bound to no node (its sessions parked, its node gone) is
        placed on a node first, waiting up to `wait_s` (default: the pool's scale-up wait) for a node to start;
        503 with Retry-After when none came. The client reconnects there with its resume key and the node restores
        its sessions from the park store. A lease on a node is returned as it is."""
        return (await service.resume_lease(lease_id, body.wait_s if body else None)).view()

    @app.post("/v1/admin/leases/{lease_id}/relocate", response_model=LeaseView, tags=["admin"], dependencies=admin)
    async def relocate_lease(lease_id: str, body: RelocateBody | None = None) -> LeaseView:
        """Moves the lease to `node_id` (or where placement puts it): its bookings move, its token is valid there
        only, and the old node is told to end its sessions (parked ones resume on the new node)."""
        node_id, wait_s = (body.node_id, body.wait_s) if body else (None, 0.0)
        return (await service.relocate(lease_id, node_id, wait_s=wait_s)).view()

    @app.get("/v1/scaling", tags=["pool"])
    async def scaling(request: Request) -> dict[str, Any]:
        """The node provider and the autoscaler: limits, whether this pool manager is the one scaling now, and
        the provider's nodes (starting, running, stopping) beside their state in the pool."""
        scaler = getattr(request.app.state, "autoscaler", None)
        if scaler is None:
            return {"provider": "none", "nodes": []}
        return dataclasses.asdict(await scaler.status())

    @app.get("/v1/nodes", response_model=list[NodeRecord], tags=["pool"])
    async def list_nodes(me: Who) -> list[NodeRecord]:
        return await service.list_nodes(me)

    @app.get("/v1/nodes/{node_id}", response_model=NodeRecord, tags=["pool"])
    async def get_node(node_id: str, me: Who) -> NodeRecord:
        for n in await service.list_nodes(me):
            if n.node_id == node_id:
                return n
        return await service.get_node(node_id)  # raises NotFound

    @app.get("/v1/sessions", response_model=list[SessionInfo], tags=["pool"])
    async def list_sessions(me: Who) -> list[SessionInfo]:
        return await service.list_sessions(me)

    @app.get("/v1/status", response_model=PoolStatus, tags=["pool"])
    async def status(me: Who) -> PoolStatus:
        return await service.status()

    @app.get("/v1/whoami", response_model=WhoAmI, tags=["pool"])
    async def whoami(me: Who) -> WhoAmI:
        """Which tenant the presented API key acts for."""
        return WhoAmI(tenant=me.tenant, admin=me.admin, key_id=me.key_id)

    async def _tenant_view(t: TenantRecord) -> TenantView:
        vram, n = await service.store.tenant_usage(t.name)
        return TenantView(**t.model_dump(), vram_booked_bytes=vram, leases_active=n)

    @app.get("/v1/admin/tenants", response_model=list[TenantView], tags=["admin"], dependencies=admin)
    async def list_tenants() -> list[TenantView]:
        return [await _tenant_view(t) for t in await service.store.list_tenants()]

    @app.put("/v1/admin/tenants/{name}", response_model=TenantView, tags=["admin"], dependencies=admin)
    async def put_tenant(name: str, body: TenantBody | None = None) -> TenantView:
        """Creates a tenant or sets its quota (absent: no limit) and whether it is disabled."""
        b = body or TenantBody(vram_quota=None, max_leases=None)
        try:
            vram = parse_size(b.vram_quota) if b.vram_quota is not None else None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return await _tenant_view(await service.put_tenant(name, vram, b.max_leases, b.disabled))

    @app.delete("/v1/admin/tenants/{name}", response_model=TenantView, tags=["admin"], dependencies=admin)
    async def revoke_tenant(name: str) -> TenantView:
        """Disables the tenant, revokes its keys and evicts its active leases."""
        t = await service.tenant(name)
        rec = await service.put_tenant(name, t.vram_quota_bytes, t.max_leases, disabled=True)
        for k in await service.store.list_api_keys():
            if k.tenant == name and k.revoked_at is None and not k.admin:
                await service.revoke_api_key(k.key_id)
        for lease in await service.list_leases():
            if lease.tenant == name:
                await service.evict_lease(lease.lease_id, f"tenant {name} was revoked")
        return await _tenant_view(rec)

    @app.post("/v1/admin/keys", status_code=201, response_model=ApiKeyCreated, tags=["admin"], dependencies=admin)
    async def create_key(body: KeyBody) -> ApiKeyCreated:
        """A new API key for a tenant (or an admin key). The key is in this answer only."""
        if not body.admin and not body.tenant:
            raise BadRequest("name the tenant the key is for (or ask for an admin key)")
        rec, key = await service.create_api_key(body.tenant, admin=body.admin, label=body.label)
        return ApiKeyCreated(**rec.view().model_dump(), key=key)

    @app.get("/v1/admin/keys", response_model=list[ApiKeyView], tags=["admin"], dependencies=admin)
    async def list_keys() -> list[ApiKeyView]:
        return [k.view() for k in await service.store.list_api_keys()]

    @app.delete("/v1/admin/keys/{key_id}", response_model=ApiKeyView, tags=["admin"], dependencies=admin)
    async def revoke_key(key_id: str) -> ApiKeyView:
        return (await service.revoke_api_key(key_id)).view()

    @app.post("/v1/admin/nodes/{node_id}/drain", response_model=NodeRecord, tags=["admin"], dependencies=admin)
    async def drain_node(node_id: str, body: ReasonBody | None = None) -> NodeRecord:
        """Stops placing leases on the node and tells it to drain; its running sessions finish."""
        return await service.drain_node(node_id, body.reason if body else None)

    @app.post("/v1/admin/nodes/{node_id}/undrain", response_model=NodeRecord, tags=["admin"], dependencies=admin)
    async def undrain_node(node_id: str) -> NodeRecord:
        """Takes a node an operator drained back into placement (up again)."""
        return await service.undrain_node(node_id)

    @app.post("/v1/admin/leases/{lease_id}/evict", response_model=LeaseView, tags=["admin"], dependencies=admin)
    async def evict_lease(lease_id: str, body: ReasonBody | None = None) -> LeaseView:
        """Ends the lease now; its node closes its sessions and the client sees the reason."""
        return (await service.evict_lease(lease_id, body.reason if body else None)).view()

    async def _page(session_id: str, action: str, to: PageTarget | None) -> PageCommandAccepted:
        cmd = await service.page_session(session_id, action, to)
        return PageCommandAccepted(
            command_id=cmd.command_id, session_id=cmd.session_id, node_id=cmd.node_id, action=cmd.action, to=cmd.to
        )

    @app.post(
        "/v1/admin/sessions/{session_id}/page-out",
        status_code=202,
        response_model=PageCommandAccepted,
        tags=["admin"],
        dependencies=admin,
    )
    async def page_out(session_id: str, body: PageOutBody | None = None) -> PageCommandAccepted:
        """Tells the session's node to page its device memory out (the session stays open; its next call pages
        it back in). Answers once the command is queued; watch the session's state in /v1/sessions."""
        return await _page(session_id, "page-out", body.to if body else PageTarget.auto)

    @app.post(
        "/v1/admin/sessions/{session_id}/page-in",
        status_code=202,
        response_model=PageCommandAccepted,
        tags=["admin"],
        dependencies=admin,
    )
    async def page_in(session_id: str) -> PageCommandAccepted:
        """Tells the session's node to page its memory back in now, before its next call."""
        return await _page(session_id, "page-in", None)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        await service.refresh_metrics()
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/info", tags=["pool"])
    async def info(request: Request) -> dict[str, Any]:
        """Where node agents reach this pool manager over gRPC (host may be empty: use this URL's host)."""
        host, port = getattr(request.app.state, "grpc_address", ("", 0))
        return {"version": __version__, "store": service.store.name, "grpc_host": host, "grpc_port": port}

    @app.get("/healthz", tags=["pool"])
    async def healthz() -> JSONResponse:
        """200 `{"status": "ok"}` when the store answers; 503 `{"status": "unavailable", "reason": ...}` if not."""
        try:
            await asyncio.wait_for(service.store.ping(), 3.0)
        except Exception as e:
            service.store_trouble()
            return JSONResponse({"status": "unavailable", "store": service.store.name,
                                 "reason": _store_reason(service, e)}, status_code=503)  # fmt: skip
        return JSONResponse({"status": "ok", "store": service.store.name})

    return app


def _store_reason(service: PoolService, e: BaseException) -> str:
    detail = str(e) or type(e).__name__
    return (f"the pool's {service.store.name} store is unavailable ({type(e).__name__}: {detail}); nothing was "
            "changed: retry in a few seconds, and operators should check the store")  # fmt: skip
