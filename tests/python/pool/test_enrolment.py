"""Node enrolment and node identity on every gRPC call, against a real pool manager over real gRPC (on the
embedded store and on a real Redis): callers without a credential, with a wrong one or with another node's are
refused on Register, Heartbeat, Commands and ValidateToken; a live node cannot be hijacked by enrolling or
registering its id again; a restarted node comes back with the credential it kept; a pool that forgot the node
makes it enrol again; one machine needs no configuration (the state directory's enrol-token file). Also the
store's credential contract, on both stores."""

from __future__ import annotations

import hashlib
import logging
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import StoreKit, eventually, fast, free_port, gpus, key_headers, pm_config
from fakes import FakeAgent

from fargpu.pool_manager.config import enrol_token_file, node_credentials_dir
from fargpu.pool_manager.enrolment import credential_hash, load_or_create_enrol_token, node_metadata
from fargpu.pool_manager.models import NodeRecord
from fargpu.pool_manager.server import PoolManager
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc
from fargpu.server.pool_link import PoolLink

Metadata = tuple[tuple[str, str], ...]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
async def pm(store_args: dict[str, object]) -> AsyncIterator[PoolManager]:
    async with PoolManager(pm_config(**fast(**store_args))) as pm:
        yield pm


@pytest.fixture
async def stub(pm: PoolManager) -> AsyncIterator[pool_pb2_grpc.NodeRegistryStub]:
    async with grpc.aio.insecure_channel(pm.grpc_target) as channel:
        yield pool_pb2_grpc.NodeRegistryStub(channel)


@pytest.fixture
async def real_node(pm: PoolManager) -> AsyncIterator[PoolLink]:
    """A node "gpu-1" at tcp://127.0.0.1:7101, registered and heartbeating through a real PoolLink."""
    link = PoolLink(
        FakeAgent("127.0.0.1:7101", (8,)), pm.grpc_target, node_id="gpu-1", retry_s=0.05, enrol_token=pm.enrol_token
    )
    await link.start()
    assert link.registered.is_set()
    await eventually(lambda: link.last_heartbeat_ok is not None)
    yield link
    await link.stop()


async def enrol(stub: pool_pb2_grpc.NodeRegistryStub, node_id: str, token: str) -> Metadata:
    reply = await stub.Enrol(pool_pb2.EnrolRequest(node_id=node_id, enrol_token=token))
    assert reply.node_id == node_id and reply.credential.startswith("fgn_")
    return node_metadata(node_id, reply.credential)


def register_request(node_id: str, endpoint: str = "tcp://6.6.6.6:7100") -> pool_pb2.RegisterRequest:
    return pool_pb2.RegisterRequest(
        node_id=node_id, endpoints=[endpoint], backend="sim", gpus=[pool_pb2.Gpu(index=0, total_bytes=1 << 34)]
    )


async def calls_refused(
    stub: pool_pb2_grpc.NodeRegistryStub, node_id: str, metadata: Metadata | None
) -> dict[str, grpc.StatusCode | None]:
    """Each of the four node calls for `node_id` with `metadata`: the status it was refused with, or None."""
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "Register": lambda: stub.Register(register_request(node_id), metadata=metadata, timeout=5),
        "Heartbeat": lambda: stub.Heartbeat(pool_pb2.HeartbeatRequest(node_id=node_id), metadata=metadata, timeout=5),
        "ValidateToken": lambda: stub.ValidateToken(
            pool_pb2.ValidateTokenRequest(node_id=node_id, token_sha256=bytes(32)), metadata=metadata, timeout=5
        ),
    }

    async def commands() -> None:
        async for _ in stub.Commands(pool_pb2.CommandsRequest(node_id=node_id), metadata=metadata, timeout=1):
            pass

    calls["Commands"] = commands
    out: dict[str, grpc.StatusCode | None] = {}
    for name, call in calls.items():
        try:
            await call()
            out[name] = None
        except grpc.aio.AioRpcError as e:
            out[name] = e.code()
    return out


def all_refused(code: grpc.StatusCode) -> dict[str, grpc.StatusCode | None]:
    return dict.fromkeys(("Register", "Heartbeat", "ValidateToken", "Commands"), code)


# --- refusals --------------------------------------------------------------------------------------------------
async def test_unenrolled_caller_is_refused_on_every_call(
    stub: pool_pb2_grpc.NodeRegistryStub, real_node: PoolLink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert await calls_refused(stub, "gpu-1", None) == all_refused(UNAUTHENTICATED)  # a live node's id
    assert await calls_refused(stub, "nobody", None) == all_refused(UNAUTHENTICATED)
    assert "refused Register for node 'gpu-1'" in caplog.text and "no node credential" in caplog.text


async def test_wrong_credential_and_wrong_enrolment_token_are_refused(
    pm: PoolManager, stub: pool_pb2_grpc.NodeRegistryStub, real_node: PoolLink
) -> None:
    for token in ("", "fge_guess", pm.enrol_token + "x", pm.enrol_token[:-1]):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Enrol(pool_pb2.EnrolRequest(node_id="newcomer", enrol_token=token))
        assert err.value.code() == UNAUTHENTICATED and "invalid enrolment token" in (err.value.details() or "")
    right = await stub.Enrol(pool_pb2.EnrolRequest(node_id="newcomer", enrol_token=pm.enrol_token))
    assert right.credential.startswith("fgn_")
    guessed = node_metadata("gpu-1", "fgn_guessed")
    assert await calls_refused(stub, "gpu-1", guessed) == all_refused(UNAUTHENTICATED)
    not_bearer = (("x-fargpu-node", "gpu-1"), ("authorization", "Basic abc"))
    assert await calls_refused(stub, "gpu-1", not_bearer) == all_refused(UNAUTHENTICATED)
    unknown = node_metadata("never-enrolled", "fgn_whatever")
    assert await calls_refused(stub, "never-enrolled", unknown) == all_refused(UNAUTHENTICATED)


async def test_credential_of_one_node_cannot_act_for_another(
    pm: PoolManager, stub: pool_pb2_grpc.NodeRegistryStub, real_node: PoolLink
) -> None:
    a = await enrol(stub, "node-a", pm.enrol_token)
    await stub.Register(register_request("node-a", "tcp://127.0.0.1:7200"), metadata=a)
    # A's credential, claiming to be B (metadata): it is not B's credential.
    a_as_b = node_metadata("gpu-1", dict(a)["authorization"].removeprefix("Bearer "))
    assert await calls_refused(stub, "gpu-1", a_as_b) == all_refused(UNAUTHENTICATED)
    # A's own metadata, acting for B (request): A is known, but may act only for itself.
    assert await calls_refused(stub, "gpu-1", a) == all_refused(PERMISSION_DENIED)
    # A may still act for itself.
    await stub.Heartbeat(pool_pb2.HeartbeatRequest(node_id="node-a"), metadata=a)


# --- the hijack ------------------------------------------------------------------------------------------------
async def test_live_node_cannot_be_hijacked(
    pm: PoolManager, stub: pool_pb2_grpc.NodeRegistryStub, real_node: PoolLink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a guessed enrolment token
        await stub.Enrol(pool_pb2.EnrolRequest(node_id="gpu-1", enrol_token="fge_guess"))
    assert err.value.code() == UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the right enrolment token, but the node is live
        await stub.Enrol(pool_pb2.EnrolRequest(node_id="gpu-1", enrol_token=pm.enrol_token))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already enrolled" in (err.value.details() or "")
    evil = await enrol(stub, "evil", pm.enrol_token)  # an enrolled attacker
    for metadata, code in [(None, UNAUTHENTICATED), (evil, PERMISSION_DENIED)]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Register(register_request("gpu-1"), metadata=metadata)
        assert err.value.code() == code
    empty_id = pool_pb2.RegisterRequest(endpoints=["tcp://6.6.6.6:7100"], gpus=[pool_pb2.Gpu(index=0, total_bytes=1)])
    # (a 1-byte GPU: the lease below cannot land there)
    assert (await stub.Register(empty_id, metadata=evil)).node_id == "evil"  # empty node id: the caller's own

    async with httpx.AsyncClient(base_url=pm.rest_url, headers=key_headers()) as api:
        got = (await api.get("/v1/nodes/gpu-1")).json()
        assert got["endpoints"] == ["tcp://127.0.0.1:7101"] and got["state"] == "up"
        lease = (await api.post("/v1/leases", json={"vram": "1G"})).json()
    assert lease["node_id"] == "gpu-1" and lease["endpoints"] == ["tcp://127.0.0.1:7101"]
    before = real_node.last_heartbeat_ok
    await eventually(lambda: real_node.last_heartbeat_ok != before)  # the real node's credential still works
    assert (await real_node.auth.authenticate(lease["token"])).lease_id == lease["lease_id"]
    assert "refused to enrol node 'gpu-1'" in caplog.text and "wrong enrolment token" in caplog.text
    assert "that node is up and enrolled" in caplog.text
    secrets = [pm.enrol_token, lease["token"], real_node._credential, dict(evil)["authorization"][7:]]
    assert all(s and s not in caplog.text for s in secrets)  # no secret is ever logged


# --- restarts --------------------------------------------------------------------------------------------------
async def test_restarted_node_registers_with_its_kept_credential(
    pm: PoolManager, private_state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = PoolLink(FakeAgent("127.0.0.1:7101"), pm.grpc_target, node_id="n", retry_s=0.05, enrol_token=pm.enrol_token)
    await first.start()
    assert first.registered.is_set()
    kept = node_credentials_dir() / "n"
    assert kept.is_relative_to(private_state_dir) and kept.exists()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert credential_hash(kept.read_text().strip()) == await pm.store.node_credential("n")
    await first.stop()  # the process dies; its record stays up until the heartbeat timeout (10 s)

    again = PoolLink(FakeAgent("127.0.0.1:7102"), pm.grpc_target, node_id="n", retry_s=0.05, enrol_token=pm.enrol_token)
    await again.start()
    try:
        assert again.registered.is_set()
        got = await pm.store.get_node("n")
        assert got is not None and got.endpoints == ["tcp://127.0.0.1:7102"]
    finally:
        await again.stop()

    kept.unlink()  # a node that lost its credential cannot take over its own live record either
    caplog.set_level(logging.WARNING)
    lost = PoolLink(FakeAgent("127.0.0.1:7103"), pm.grpc_target, node_id="n", retry_s=0.05, enrol_token=pm.enrol_token)
    await lost.start(wait_registered_s=0.5)
    try:
        assert not lost.registered.is_set()
        assert "ALREADY_EXISTS" in caplog.text and "already enrolled" in caplog.text
        got = await pm.store.get_node("n")
        assert got is not None and got.endpoints == ["tcp://127.0.0.1:7102"]
    finally:
        await lost.stop()


async def test_link_enrols_again_when_a_memory_only_pool_forgot_it() -> None:
    config = pm_config(**fast(port=free_port(), grpc_port=free_port()))
    pm = PoolManager(config)
    await pm.start()
    link = PoolLink(FakeAgent(), pm.rest_url, node_id="n", retry_s=0.05, enrol_token=pm.enrol_token)
    await link.start()
    try:
        old = await pm.store.node_credential("n")
        await pm.stop()
        pm = PoolManager(config)  # memory only: knows neither the node nor its credential
        await pm.start()

        async def back() -> bool:
            return await pm.store.get_node("n") is not None and link.registered.is_set()

        await eventually(back)
        new = await pm.store.node_credential("n")
        assert new is not None and new != old
    finally:
        await link.stop()
        await pm.stop()


# --- zero configuration ----------------------------------------------------------------------------------------
async def test_one_machine_needs_no_configuration(private_state_dir: Path) -> None:
    path = enrol_token_file()
    assert path.is_relative_to(private_state_dir) and not path.exists()
    async with PoolManager(pm_config()) as pm1, PoolManager(pm_config()) as pm2:
        assert pm1.enrol_token == pm2.enrol_token == path.read_text().strip()
        assert pm1.enrol_token_file == path and stat.S_IMODE(path.stat().st_mode) == 0o600
        link = PoolLink(FakeAgent(), pm2.rest_url, node_id="local", retry_s=0.05)  # no token given
        await link.start()
        try:
            assert link.registered.is_set()
        finally:
            await link.stop()
    async with PoolManager(pm_config(enrol_token="given")) as pm3:
        assert pm3.enrol_token == "given" and pm3.enrol_token_file is None
    assert path.read_text().strip() == pm1.enrol_token  # never overwritten


def test_concurrent_pool_managers_create_one_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "enrol-token"
    with ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda _: load_or_create_enrol_token(path), range(64)))
    assert len(set(tokens)) == 1 and path.read_text().strip() == tokens[0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["enrol-token"]  # no temporary files left


async def test_node_without_a_token_says_what_to_set_and_keeps_trying(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with PoolManager(pm_config(**fast(enrol_token="configured-secret"))) as pm:
        link = PoolLink(FakeAgent(), pm.grpc_target, node_id="n", retry_s=0.02)
        await link.start(wait_registered_s=0.3)
        try:
            assert not link.registered.is_set()
            lines = [r.getMessage() for r in caplog.records if "no enrolment token" in r.getMessage()]
            assert len(lines) == 1, lines  # one clear line, not one per retry
            assert "FARGPU_ENROL_TOKEN" in lines[0] and str(enrol_token_file()) in lines[0]
            enrol_token_file().parent.mkdir(parents=True, exist_ok=True)
            enrol_token_file().write_text("configured-secret\n")  # as a pool manager here would have
            await eventually(link.registered.is_set)
        finally:
            await link.stop()
    assert "configured-secret" not in caplog.text


# --- the store contract, on both stores ------------------------------------------------------------------------
def node(node_id: str) -> NodeRecord:
    return NodeRecord(
        node_id=node_id, endpoints=["tcp://n:1"], backend="sim", gpus=gpus(8), registered_at=0.0, last_heartbeat=0.0
    )


async def test_store_keeps_credentials_and_refuses_to_replace_a_live_nodes(store_kit: StoreKit) -> None:
    store = await store_kit.new()
    h1, h2 = hashlib.sha256(b"1").hexdigest(), hashlib.sha256(b"2").hexdigest()
    assert await store.node_credential("n1") is None
    assert await store.set_node_credential("n1", h1)  # unknown node: enrols
    assert await store.set_node_credential("n1", h2)  # not registered yet: may enrol again
    await store.register_node(node("n1"))
    assert not await store.set_node_credential("n1", h1)  # live and enrolled: refused
    assert await store.node_credential("n1") == h2
    await store.register_node(node("legacy"))
    assert await store.set_node_credential("legacy", h1)  # live but never enrolled (older pool): enrols
    assert await store.mark_down("n1", "gone", None) is not None
    assert await store.set_node_credential("n1", h1)  # down: may enrol again
    store = await store_kit.reopen(store)
    assert await store.node_credential("n1") == h1 and await store.node_credential("legacy") == h1
    assert await store.node_credential("n2") is None
