"""`fargpu pool ...` and `fargpu pool-manager`: tables and --json against a running pool manager, admin
commands with the admin token, clear messages when the pool manager is unreachable, and a pool manager
process that is killed with SIGKILL and restarted without losing a lease (nor its node's enrolment)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import ThreadedPool, free_port, gpus, key_headers, subprocess_env
from typer.testing import CliRunner

from fargpu.cli import app
from fargpu.pool_manager.service_core import LeaseRequest
from fargpu.pool_manager.tenants import Principal

GiB = 1 << 30
LOCAL = Principal("local")  # the tenant of the local key that the CLI presents
ENROL = "enrol-secret-for-tests"
runner = CliRunner(env={"COLUMNS": "250"})


def test_pool_commands(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool()
    assert tp.pm is not None
    svc = tp.pm.service
    tp.call(svc.register_node("gpu-box-1", ["tcp://10.1.0.7:7100"], "sim", "", gpus(24, 24)))
    lease, _ = tp.call(svc.create_lease(LeaseRequest(vram_bytes=8 * GiB, label="training"), LOCAL))  # type: ignore[misc]
    pool = ["--pool", tp.url]

    r = runner.invoke(app, ["pool", "status", *pool, "--json"])
    assert r.exit_code == 0, r.output
    status = json.loads(r.output)
    assert status["nodes_up"] == 1 and status["leases_active"] == 1 and status["gpus"] == 2
    r = runner.invoke(app, ["pool", "status", *pool])
    assert r.exit_code == 0 and "1 up, 0 draining, 0 down" in r.output

    r = runner.invoke(app, ["pool", "nodes", *pool, "--json"])
    assert [n["node_id"] for n in json.loads(r.output)] == ["gpu-box-1"]
    r = runner.invoke(app, ["pool", "nodes", *pool])
    assert r.exit_code == 0 and "gpu-box-1" in r.output and "8.0 GiB / 48.0 GiB" in r.output

    r = runner.invoke(app, ["pool", "leases", *pool, "--json"])
    assert [x["lease_id"] for x in json.loads(r.output)] == [lease.lease_id]
    r = runner.invoke(app, ["pool", "leases", *pool])
    assert lease.lease_id in r.output and "training" in r.output

    r = runner.invoke(app, ["pool", "sessions", *pool, "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == []

    r = runner.invoke(app, ["pool", "evict", lease.lease_id, *pool], env={"FARGPU_ADMIN_TOKEN": "wrong"})
    assert r.exit_code == 1 and "wrong admin token" in r.output
    r = runner.invoke(app, ["pool", "evict", lease.lease_id, *pool])
    assert r.exit_code == 1 and "not an admin key" in r.output and "FARGPU_ADMIN_TOKEN" in r.output
    r = runner.invoke(app, ["pool", "evict", lease.lease_id, *pool, "--admin-token", "admin-secret", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["state"] == "evicted"
    r = runner.invoke(app, ["pool", "evict", "lease-nope", *pool, "--admin-token", "admin-secret"])
    assert r.exit_code == 1 and "404" in r.output
    r = runner.invoke(
        app,
        ["pool", "drain", "gpu-box-1", "--reason", "bios update", *pool],
        env={"FARGPU_ADMIN_TOKEN": "admin-secret"},
    )
    assert r.exit_code == 0 and "node gpu-box-1 is draining" in r.output
    r = runner.invoke(app, ["pool", "leases", *pool, "--all", "--json"])
    assert json.loads(r.output)[0]["end_reason"] == "evicted by an operator"


def test_unreachable_pool_manager_is_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for cmd in (["status"], ["nodes", "--json"], ["leases"], ["sessions"], ["drain", "x"], ["evict", "y"],
                ["page-out", "s"], ["page-in", "s", "--wait", "5"]):  # fmt: skip
        r = runner.invoke(app, ["pool", *cmd, "--pool", url])
        assert r.exit_code == 2, (cmd, r.output)
        assert f"cannot reach the pool manager at {url}" in " ".join(r.output.split())


def test_pool_manager_process_restart_after_sigkill_keeps_leases(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    state = tmp_path / "state.json"
    cmd = [
        sys.executable, "-m", "fargpu.cli", "pool-manager", "--port", str(port), "--grpc-port", str(grpc_port),
        "--state-file", str(state), "--log-level", "warning", "--max-sessions-per-lease", "5",
        "--enrol-token", ENROL, "--idle-timeout", "45",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        # cwd: not the repo root, whose bare `fargpu/` folder would shadow the mapped package
        proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE, cwd=tmp_path)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "pool manager did not start"
            time.sleep(0.1)

    proc = start()
    try:
        import grpc

        from fargpu.pool_manager.enrolment import node_metadata
        from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = pool_pb2_grpc.NodeRegistryStub(ch)
            enrolled = stub.Enrol(pool_pb2.EnrolRequest(node_id="n1", enrol_token=ENROL))  # type: ignore[call-arg]
            md = node_metadata("n1", enrolled.credential)
            stub.Register(  # type: ignore[call-arg]
                pool_pb2.RegisterRequest(
                    node_id="n1", endpoints=["tcp://127.0.0.1:7100"], gpus=[pool_pb2.Gpu(index=0, total_bytes=8 * GiB)]
                ),
                metadata=md,
            )
        created = httpx.post(f"{url}/v1/leases", json={"vram": "6G", "ttl_s": 600}, headers=key_headers()).json()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start()
        got = httpx.get(f"{url}/v1/leases/{created['lease_id']}", headers=key_headers()).json()
        assert got["state"] == "active" and got["allocs"] == created["allocs"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:  # the node's credential survived the restart
            digest = hashlib.sha256(created["token"].encode()).digest()
            reply = pool_pb2_grpc.NodeRegistryStub(ch).ValidateToken(  # type: ignore[call-arg]
                pool_pb2.ValidateTokenRequest(node_id="n1", token_sha256=digest), metadata=md
            )
        assert reply.valid and reply.lease_id == created["lease_id"] and reply.max_sessions == 5
        assert reply.qos == "standard" and reply.HasField("idle_timeout_s") and reply.idle_timeout_s == 45.0
        assert created["idle_timeout_s"] == 45.0
        r = httpx.post(f"{url}/v1/leases", json={"vram": "6G"}, headers=key_headers())
        assert r.status_code == 503  # the booking survived too
        r = httpx.delete(
            f"{url}/v1/leases/{created['lease_id']}", headers=key_headers()
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pool_manager_refuses_bad_paging_flags() -> None:
    r = runner.invoke(app, ["pool-manager", "--overcommit", "0.5"])
    assert r.exit_code == 2 and "--overcommit" in r.output
    r = runner.invoke(app, ["pool-manager", "--idle-timeout", "-1"])
    assert r.exit_code == 2 and "--idle-timeout" in r.output
    r = runner.invoke(app, ["run", "--idle-timeout", "-3", "--", "true"])
    assert r.exit_code == 2 and "--idle-timeout" in r.output
    r = runner.invoke(app, ["server", "--overcommit", "0.5"])  # a node's own ratio: at least 1 too
    assert r.exit_code == 2 and "--overcommit" in r.output
