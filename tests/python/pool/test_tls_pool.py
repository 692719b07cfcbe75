"""TLS on the pool manager's links, against a real pool manager over real sockets on loopback: REST over HTTPS
(verified against the development CA the pool makes in the state directory), the one-line errors of a plaintext
client at a TLS pool and of a client with the wrong CA, node enrolment over HTTPS issuing a certificate, and
mTLS on gRPC: a caller without a certificate, with one of another CA, with an expired one of the right CA, or with
another node's certificate is refused; the enrolled node registers and heartbeats."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import eventually, fast, pm_config
from fakes import FakeAgent

from fargpu.pool_manager.client import PoolClient, PoolUnreachable
from fargpu.pool_manager.enrolment import node_metadata
from fargpu.pool_manager.server import PoolManager
from fargpu.pool_manager.tls import client_context, tls_dir
from fargpu.pool_manager.tls_ca import CertificateAuthority
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc
from fargpu.server.pool_link import PoolLink


@pytest.fixture
async def pm() -> AsyncIterator[PoolManager]:
    async with PoolManager(pm_config(**fast(tls="on"))) as pm:
        yield pm


async def test_rest_is_https_and_verified(pm: PoolManager) -> None:
    assert pm.rest_url.startswith("https://127.0.0.1:")
    assert pm.tls is not None and pm.tls.development and (tls_dir() / "ca.key").stat().st_mode & 0o077 == 0
    async with PoolClient(pm.rest_url) as client:  # finds the development CA and the local key by itself
        assert (await client.status())["nodes_up"] == 0


async def test_plaintext_client_gets_one_line(pm: PoolManager) -> None:
    plain = pm.rest_url.replace("https://", "http://")
    async with PoolClient(plain) as client:
        with pytest.raises(PoolUnreachable) as e:
            await client.status()
    msg = str(e.value)
    assert "speaks HTTPS" in msg and pm.rest_url in msg and "\n" not in msg


async def test_wrong_ca_is_refused(pm: PoolManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    monkeypatch.setenv("FARGPU_TLS_CA", str(other.cert_file))
    async with PoolClient(pm.rest_url) as client:
        with pytest.raises(PoolUnreachable) as e:
            await client.status()
    assert "cannot verify the TLS certificate" in str(e.value)


async def test_https_client_at_plaintext_pool(tmp_path: Path) -> None:
    async with PoolManager(pm_config(**fast(tls="off"))) as plain:
        url = plain.rest_url.replace("http://", "https://")
        async with PoolClient(url) as client:
            with pytest.raises(PoolUnreachable) as e:
                await client.status()
    assert "does not speak TLS" in str(e.value)


async def test_auto_mode_follows_the_listen_address() -> None:
    async with PoolManager(pm_config(**fast(host="127.0.0.1", grpc_host="127.0.0.1"))) as local:
        assert local.tls is None and local.rest_url.startswith("http://")
    async with PoolManager(pm_config(**fast(host="0.0.0.0", grpc_host="127.0.0.1"))) as wide:
        assert wide.tls is not None and wide.rest_url.startswith("https://")


async def test_enrol_over_https_refuses_a_wrong_token(pm: PoolManager) -> None:
    async with httpx.AsyncClient(verify=client_context(tls_dir() / "ca.pem")) as http:
        r = await http.post(pm.rest_url + "/v1/nodes/enrol", json={"node_id": "n", "enrol_token": "fge_wrong"})
    assert r.status_code == 401 and "certificate" not in r.json() and "credential" not in r.json()


async def test_node_enrols_over_https_and_speaks_mtls(pm: PoolManager) -> None:
    link = PoolLink(FakeAgent("127.0.0.1:7101", (8,)), pm.rest_url, node_id="gpu-1", retry_s=0.05,
                    enrol_token=pm.enrol_token)  # fmt: skip
    await link.start()
    try:
        assert link.registered.is_set() and link.cert is not None
        await eventually(lambda: link.last_heartbeat_ok is not None)
        assert (link.credential_file().with_suffix(".key")).stat().st_mode & 0o077 == 0
        nodes = await pm.service.list_nodes()
        assert [n.node_id for n in nodes] == ["gpu-1"]
    finally:
        await link.stop()


async def _call(target: str, creds: grpc.ChannelCredentials, node_id: str, credential: str) -> grpc.StatusCode | None:
    async with grpc.aio.secure_channel(target, creds) as ch:
        stub = pool_pb2_grpc.NodeRegistryStub(ch)
        try:
            request = pool_pb2.HeartbeatRequest(node_id=node_id)
            await stub.Heartbeat(request, metadata=node_metadata(node_id, credential), timeout=3)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return None


async def test_grpc_refuses_callers_without_a_good_certificate(pm: PoolManager, tmp_path: Path) -> None:
    ca_pem = (tls_dir() / "ca.pem").read_bytes()
    async with httpx.AsyncClient(verify=client_context(tls_dir() / "ca.pem")) as http:
        r = await http.post(pm.rest_url + "/v1/nodes/enrol", json={"node_id": "gpu-7", "enrol_token": pm.enrol_token,
                                                                   "names": ["127.0.0.1"]})  # fmt: skip
    assert r.status_code == 201
    body = r.json()
    good = grpc.ssl_channel_credentials(ca_pem, body["key"].encode(), body["certificate"].encode())
    cred = body["credential"]
    assert await _call(pm.grpc_target, good, "gpu-7", cred) is None  # the enrolled node: accepted

    none = grpc.ssl_channel_credentials(ca_pem)
    assert await _call(pm.grpc_target, none, "gpu-7", cred) == grpc.StatusCode.UNAVAILABLE  # no client certificate

    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    k, c = other.issue("gpu-7", ["127.0.0.1"])
    assert await _call(pm.grpc_target, grpc.ssl_channel_credentials(ca_pem, k, c), "gpu-7", cred) == (
        grpc.StatusCode.UNAVAILABLE)  # an unknown CA  # fmt: skip

    ours = CertificateAuthority.load(tls_dir() / "ca.pem", tls_dir() / "ca.key")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    k, c = ours.issue("gpu-7", ["127.0.0.1"], days=1, not_before=old)  # expired 29 days ago
    assert await _call(pm.grpc_target, grpc.ssl_channel_credentials(ca_pem, k, c), "gpu-7", cred) == (
        grpc.StatusCode.UNAVAILABLE)  # fmt: skip

    k, c = ours.issue("gpu-8", ["127.0.0.1"])  # a good certificate of another node, with gpu-7's credential
    assert await _call(pm.grpc_target, grpc.ssl_channel_credentials(ca_pem, k, c), "gpu-7", cred) == (
        grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip

    async with grpc.aio.insecure_channel(pm.grpc_target) as ch:  # plaintext gRPC at the TLS port
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await pool_pb2_grpc.NodeRegistryStub(ch).Heartbeat(pool_pb2.HeartbeatRequest(node_id="gpu-7"), timeout=3)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_policy_is_tls_beyond_loopback() -> None:
    from fargpu.pool_manager.tls import is_loopback, wanted

    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "::ffff:127.0.0.1", "localhost")] == [True] * 5
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.2", "pool.example", ""))
    assert not wanted("auto", ["127.0.0.1", "localhost"]) and wanted("auto", ["127.0.0.1", "0.0.0.0"])
    assert wanted("on", ["127.0.0.1"]) and not wanted("off", ["0.0.0.0"])


async def test_a_node_renews_its_certificate_and_stays_up() -> None:
    async with PoolManager(pm_config(**fast(tls="on", node_cert_days=3 / 86400))) as pm:  # a 3 s certificate
        link = PoolLink(FakeAgent("127.0.0.1:7101", (8,)), pm.rest_url, node_id="gpu-r", retry_s=0.05,
                        enrol_token=pm.enrol_token)  # fmt: skip
        await link.start()
        try:
            assert link.cert is not None
            first, credential = link.cert, link._credential
            await eventually(lambda: link.cert is not first, within_s=6)  # renewed at 2/3 of its life
            expired_at = first.expires_at
            await asyncio.sleep(max(0.0, expired_at - time.time()) + 0.5)  # the first certificate has expired
            seen = link.last_heartbeat_ok or 0
            await eventually(lambda: (link.last_heartbeat_ok or 0) > seen)  # still heartbeating, with the new one
            assert link._credential == credential  # renewed, not enrolled again
            node = next(n for n in await pm.service.list_nodes() if n.node_id == "gpu-r")
            assert node.state.value == "up"
        finally:
            await link.stop()


async def test_a_node_key_never_leaves_the_node(pm: PoolManager) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from fargpu.pool_manager.tls_ca import make_csr

    key_pem, csr = make_csr("anything")  # the pool names the certificate itself (the node id), not the CSR
    async with httpx.AsyncClient(verify=client_context(tls_dir() / "ca.pem")) as http:
        r = await http.post(pm.rest_url + "/v1/nodes/enrol", json={"node_id": "gpu-c", "enrol_token": pm.enrol_token,
                                                                   "csr": csr.decode()})  # fmt: skip
        bad = await http.post(pm.rest_url + "/v1/nodes/enrol", json={"node_id": "gpu-d", "enrol_token": pm.enrol_token,
                                                                     "csr": "not a csr"})  # fmt: skip
    assert r.status_code == 201 and "key" not in r.json(), r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    mine = serialization.load_pem_private_key(key_pem, None).public_key()
    raw = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*raw) == mine.public_bytes(*raw)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "gpu-c"
    assert bad.status_code == 400 and "CSR" in bad.json()["reason"]
