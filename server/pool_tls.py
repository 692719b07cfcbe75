"""The node's side of a TLS pool (one whose URL is https://): enrolment over HTTPS, the node's certificate, and the
gRPC channel credentials that present it (mTLS).

`enrol_https` posts the enrolment token to `/v1/nodes/enrol`, verifying the pool against its CA (FARGPU_TLS_CA,
else this machine's development CA), with a certificate request for a key the node makes (it never leaves the
node; without the cryptography library the pool makes the key), and gets the node's credential and, from a pool
that is a CA, a certificate for the node id, naming the hosts the node serves clients on. The node keeps them
beside its credential (`<state dir>/node-credentials/<node id>.pem|.key`, 0600). A node given its own
certificate (FARGPU_TLS_CERT / FARGPU_TLS_KEY, issued by a CA the pool trusts, common name = the node id)
presents that one instead. The same certificate serves the node's data socket (server/tls.py), so stubs verify
the node against the pool's CA. When two thirds of its life are gone the node renews it (`renew_https`, with its
credential), staying registered."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from fargpu.pool_manager.tls import CERT_ENV, KEY_ENV, client_ca_file, client_context, write_private


class EnrolRefusedError(Exception):
    """The pool refused the enrolment (wrong token, a live node id): the message is the pool's reason."""


@dataclass(frozen=True)
class NodeCert:
    cert: bytes
    key: bytes
    ca: bytes
    issued_at: float = 0.0  # when the pool issued it, and when it expires (0: unknown, e.g. the operator's own)
    expires_at: float = 0.0

    def renew_due(self, now: float | None = None) -> bool:
        """Two thirds of its life are gone: time to renew (the pool issued it and said when it expires)."""
        if not (self.issued_at and self.expires_at > self.issued_at):
            return False
        return (now or time.time()) >= self.issued_at + (self.expires_at - self.issued_at) * 2 / 3

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)  # fmt: skip


def pool_ca_bytes() -> bytes:
    ca = client_ca_file()
    if ca is None:
        raise FileNotFoundError("no CA to verify the pool with: set FARGPU_TLS_CA to the pool's ca.pem")
    return ca.read_bytes()


def own_cert() -> NodeCert | None:
    """The node's own certificate from FARGPU_TLS_CERT / FARGPU_TLS_KEY, if set."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if not (cert and key):
        return None
    return NodeCert(Path(cert).read_bytes(), Path(key).read_bytes(), pool_ca_bytes())


def load(base: Path) -> NodeCert | None:
    """The certificate kept at `base`.pem / .key, or None."""
    try:
        cert, key = base.with_suffix(".pem").read_bytes(), base.with_suffix(".key").read_bytes()
    except OSError:
        return None
    issued = expires = 0.0
    try:
        issued, expires = (float(x) for x in base.with_suffix(".expires").read_text().split()[:2])
    except (OSError, ValueError):
        pass
    return NodeCert(cert, key, pool_ca_bytes(), issued, expires)


def save(base: Path, cert: NodeCert) -> None:
    base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(base.with_suffix(".key"), cert.key)
    write_private(base.with_suffix(".pem"), cert.cert)
    write_private(base.with_suffix(".expires"), f"{cert.issued_at} {cert.expires_at}\n".encode())


async def enrol_https(pool_url: str, node_id: str, token: str, names: list[str],
                      timeout_s: float = 10.0) -> tuple[str, str, NodeCert | None]:  # fmt: skip
    """(node id, credential, certificate or None) from the pool's HTTPS enrolment."""
    import httpx  # here, not at the top: a node of a plain-HTTP pool never needs it (about 0.1 s to import)

    key, csr = _request()
    async with httpx.AsyncClient(timeout=timeout_s, verify=client_context()) as http:
        body = {"node_id": node_id, "enrol_token": token, "names": names[:32], "csr": csr}
        r = await http.post(pool_url.rstrip("/") + "/v1/nodes/enrol", json=body)
    if r.status_code != 201:
        try:
            reason = str(r.json().get("reason", r.text))
        except ValueError:
            reason = r.text or r.reason_phrase
        raise EnrolRefusedError(f"the pool refused to enrol this node ({r.status_code}): {reason}")
    reply = r.json()
    return str(reply["node_id"]), str(reply["credential"]), _cert_of(reply, key)


def _request() -> tuple[bytes | None, str]:
    """(a new key of this node, a CSR for it) when this node has the cryptography library, else (None, ""): the
    pool then makes the key."""
    try:
        from fargpu.pool_manager.tls_ca import make_csr
    except ImportError:
        return None, ""
    key, csr = make_csr("fargpu node")
    return key, csr.decode()


def _cert_of(body: dict[str, object], own_key: bytes | None) -> NodeCert | None:
    key = str(body["key"]).encode() if body.get("key") else own_key
    if not body.get("certificate") or key is None:
        return None
    expires = body.get("expires_at")
    return NodeCert(str(body["certificate"]).encode(), key,
                    str(body.get("ca", "")).encode() or pool_ca_bytes(), time.time(),
                    float(expires) if isinstance(expires, int | float) else 0.0)  # fmt: skip


async def renew_https(pool_url: str, node_id: str, credential: str, names: list[str],
                      timeout_s: float = 10.0) -> NodeCert:  # fmt: skip
    """A new certificate for this node before its current one expires (the pool checks the credential)."""
    import httpx

    key, csr = _request()
    async with httpx.AsyncClient(timeout=timeout_s, verify=client_context()) as http:
        r = await http.post(pool_url.rstrip("/") + "/v1/nodes/renew-certificate",
                            json={"node_id": node_id, "names": names[:32], "csr": csr},
                            headers={"Authorization": f"Bearer {credential}"})  # fmt: skip
    cert = _cert_of(r.json(), key) if r.status_code == 200 else None
    if cert is None:
        raise EnrolRefusedError(f"the pool did not renew this node's certificate ({r.status_code}): "
                                f"{r.text[:200]}")  # fmt: skip
    return cert
