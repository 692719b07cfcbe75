"""Admitting a node: the enrolment step both doors share (gRPC `Enrol` on a plaintext pool, `POST /v1/nodes/enrol`
over HTTPS on a TLS pool), and the HTTPS door itself.

With TLS on, the pool's gRPC port requires a client certificate from every caller (mTLS), so a node without one
cannot reach `Enrol` there: it enrols over HTTPS instead, with the same enrolment token, and gets its credential
plus, when the pool holds a CA key, a certificate (common name: its node id; names: the hosts it asked for, which
stubs verify on its data socket). A node sends a certificate request (CSR) for a key it made itself, which never
leaves it; only a node without the `cryptography` library gets a key made by the pool, inside the verified HTTPS
connection, as the holder of the enrolment token. The node keeps its key 0600. A pool without a CA key
(an operator's CA whose key stays elsewhere) issues only the credential: nodes then bring their own certificates.
A node renews its certificate before it expires (`POST /v1/nodes/renew-certificate` with its credential), so it
never has to enrol again, which a live node cannot do until the pool has marked it down.
Refusals are logged with the peer's address, never with a secret."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from fargpu.pool_manager.enrolment import (
    credential_hash,
    credential_matches,
    enrol_token_matches,
    new_node_credential,
)
from fargpu.pool_manager.models import NodeState
from fargpu.pool_manager.service import PoolService

log = logging.getLogger("fargpu.pool_manager.enrol")

Run = Callable[[Awaitable[Any]], Awaitable[Any]]


class EnrolRefused(Exception):
    """kind: "invalid" (bad request), "unauthenticated" (wrong token) or "exists" (a live, enrolled node id)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


async def _same(aw: Awaitable[Any]) -> Any:
    return await aw


async def admit(service: PoolService, expected_token: str, node_id: str, token: str, peer: str,
                run: Run = _same) -> tuple[str, str]:  # fmt: skip
    """(node id, new credential) for a node presenting `token`; raises EnrolRefused."""
    node_id = node_id or f"node-{secrets.token_hex(4)}"
    if len(node_id) > 253 or not node_id.isprintable():
        raise EnrolRefused("invalid", "a node id is at most 253 printable characters")
    if not token or not enrol_token_matches(token, expected_token):
        log.warning("refused to enrol node %r from %s: wrong enrolment token", node_id, peer)
        raise EnrolRefused("unauthenticated", "invalid enrolment token")
    credential = new_node_credential()
    if not await run(service.store.set_node_credential(node_id, credential_hash(credential))):
        node = await run(service.store.get_node(node_id))
        state = node.state.value if node is not None else NodeState.up.value
        log.warning("refused to enrol node %r from %s: that node is %s and enrolled; only its own credential may "
                    "register it (if it lost it, it can enrol again once the pool marks it down)", node_id, peer,
                    state)  # fmt: skip
        raise EnrolRefused("exists", f"node {node_id!r} is {state} and already enrolled: only its own credential "
                           "may register it; a node that lost its credential can enrol again once the pool has "
                           "marked it down")  # fmt: skip
    log.info("node %r enrolled from %s", node_id, peer)
    return node_id, credential


class EnrolBody(BaseModel):
    node_id: str = Field("", max_length=253)
    enrol_token: str = Field(max_length=512)
    names: list[str] = Field(default_factory=list, max_length=32)  # hosts its certificate should name
    csr: str = Field("", max_length=8192)  # a request for its own key (PEM); without one the pool makes the key


class RenewBody(BaseModel):
    node_id: str = Field(max_length=253)
    names: list[str] = Field(default_factory=list, max_length=32)
    csr: str = Field("", max_length=8192)


_STATUS = {"invalid": 400, "unauthenticated": 401, "exists": 409}


def enrol_router(service: PoolService, expected_token: str, issuer: Any | None, node_cert_days: float) -> APIRouter:
    """`POST /v1/nodes/enrol` (no API key: the enrolment token is the credential). `issuer`: a
    tls_ca.CertificateAuthority, or None when the pool issues no certificates."""
    router = APIRouter()

    @router.post("/v1/nodes/enrol", tags=["nodes"], include_in_schema=True)
    async def enrol(body: EnrolBody, request: Request) -> JSONResponse:
        """A node server joins the pool: its credential and, when this pool is a CA, its certificate."""
        peer = request.client.host if request.client else "?"
        names = [n for n in body.names if 0 < len(n) <= 253 and n.isprintable()]
        try:
            node_id, credential = await admit(service, expected_token, body.node_id, body.enrol_token, peer)
        except EnrolRefused as e:
            return JSONResponse({"error": e.kind, "reason": e.message}, status_code=_STATUS[e.kind])
        out: dict[str, Any] = {"node_id": node_id, "credential": credential}
        if issuer is not None:
            try:
                out |= await _certificate(issuer, node_id, names, node_cert_days, body.csr)
            except ValueError as e:  # a bad CSR: the credential just issued is kept; the node enrols again
                return JSONResponse({"error": "invalid", "reason": str(e)}, status_code=400)
        return JSONResponse(out, status_code=201)

    @router.post("/v1/nodes/renew-certificate", tags=["nodes"])
    async def renew(body: RenewBody, request: Request) -> JSONResponse:
        """A node renews its certificate before it expires, proving itself with its credential (Bearer fgn_...),
        so it stays registered: enrolling again would need the pool to mark it down first."""
        peer = request.client.host if request.client else "?"
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        stored = await service.store.node_credential(body.node_id)
        # hash a presented credential even for an unknown node, so timing does not tell which ids exist
        good = credential_matches(presented, stored if stored is not None else credential_hash(""))
        if stored is None or not presented or not good:
            log.warning("refused to renew the certificate of node %r from %s: invalid credential", body.node_id, peer)
            return JSONResponse({"error": "unauthenticated", "reason": "invalid node credential: enrol again"},
                                status_code=401)  # fmt: skip
        if issuer is None:
            return JSONResponse({"error": "no_ca", "reason": "this pool issues no certificates (no CA key)"},
                                status_code=409)  # fmt: skip
        names = [n for n in body.names if 0 < len(n) <= 253 and n.isprintable()]
        try:
            cert = await _certificate(issuer, body.node_id, names, node_cert_days, body.csr)
        except ValueError as e:
            return JSONResponse({"error": "invalid", "reason": str(e)}, status_code=400)
        log.info("renewed the certificate of node %r (from %s)", body.node_id, peer)
        return JSONResponse(cert)

    return router


async def _certificate(issuer: Any, node_id: str, names: list[str], days: float, csr: str = "") -> dict[str, Any]:
    key, cert = await asyncio.to_thread(issuer.issue, node_id, names, days, None, csr.encode() if csr else None)
    out = {"certificate": cert.decode(), "ca": issuer.cert_file.read_text(), "expires_at": time.time() + days * 86400}
    return out | ({"key": key.decode()} if key else {})
