"""Issue 16's rough edges on the pool side, through the commands users run (the `fargpu` console script):
undrain (REST, service and both stores), --json errors from every `fargpu pool` command, the admin token hint on
401/403, column names that say what they show, Swagger UI and ReDoc served offline, and busy ports of
`fargpu pool-manager` as one line naming the port and its flag."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import FakeClock, ThreadedPool, free_port, gpus, subprocess_env

from fargpu.pool_manager.models import NodeRecord, NodeState
from fargpu.pool_manager.service_core import LeaseRequest
from fargpu.pool_manager.store import Store
from fargpu.pool_manager.tenants import Principal

GiB = 1 << 30
LOCAL = Principal("local")  # the tenant of the local key that the CLI presents
FARGPU = str(Path(sys.executable).parent / "fargpu")


def fargpu(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    e = subprocess_env()
    e.pop("FARGPU_ADMIN_TOKEN", None)
    e["COLUMNS"] = "250"
    e.update(env or {})
    return subprocess.run([FARGPU, *args], env=e, capture_output=True, text=True, timeout=timeout, cwd="/")


def node(node_id: str, *sizes: float) -> NodeRecord:
    return NodeRecord(node_id=node_id, endpoints=["tcp://10.0.0.1:7100"], backend="sim", gpus=gpus(*sizes),
                      registered_at=1_800_000_000.0, last_heartbeat=1_800_000_000.0)


async def test_undrain_on_both_stores(store: Store, clock: FakeClock) -> None:
    await store.register_node(node("n1", 16))
    drained = await store.set_draining("n1", "maintenance")
    assert drained is not None and drained.state == NodeState.draining
    up = await store.set_undrained("n1")
    assert up is not None and up.state == NodeState.up and not up.state_reason
    assert {v.node_id: v.state for v in await store.placement_view()}["n1"] == NodeState.up
    again = await store.set_undrained("n1")  # up stays up
    assert again is not None and again.state == NodeState.up
    assert await store.set_undrained("nope") is None
    await store.mark_down("n1", "silent", None)
    down = await store.set_undrained("n1")  # down stays down: it comes back by registering
    assert down is not None and down.state == NodeState.down


def test_undrain_through_the_cli(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool()
    assert tp.pm is not None
    tp.call(tp.pm.service.register_node("gpu-box-1", ["tcp://10.1.0.7:7100"], "sim", "", gpus(24)))
    admin = {"FARGPU_ADMIN_TOKEN": "admin-secret"}
    r = fargpu("pool", "drain", "gpu-box-1", "--pool", tp.url, env=admin)
    assert r.returncode == 0 and "is draining" in r.stdout, r.stderr
    r = fargpu("pool", "undrain", "gpu-box-1", "--pool", tp.url, env=admin)
    assert r.returncode == 0 and "node gpu-box-1 is up" in r.stdout, r.stderr
    r = fargpu("pool", "undrain", "gpu-box-1", "--pool", tp.url, "--json", env=admin)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "up"
    r = fargpu("pool", "undrain", "nope", "--pool", tp.url, "--json", env=admin)
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "not_found"
    r = fargpu("pool", "undrain", "gpu-box-1", "--pool", tp.url)  # no token: 401, with the hint
    assert r.returncode == 1


def test_admin_refusals_say_what_to_set(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool()
    for extra in ([], ["--admin-token", "wrong"]):
        r = fargpu("pool", "evict", "lease-x", "--pool", tp.url, *extra)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "FARGPU_ADMIN_TOKEN" in lines[0] and "Traceback" not in r.stderr, r.stderr
    no_admin = threaded_pool(admin_token=None)
    r = fargpu("pool", "drain", "n", "--pool", no_admin.url, "--admin-token", "x")
    assert r.returncode == 1 and "start it with FARGPU_ADMIN_TOKEN" in r.stderr


def test_every_pool_command_prints_json_errors(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool()
    dead = f"http://127.0.0.1:{free_port()}"
    commands = (["status"], ["nodes"], ["leases"], ["sessions"], ["drain", "x"], ["undrain", "x"], ["evict", "y"],
                ["page-out", "s"], ["page-in", "s"])  # fmt: skip
    for cmd in commands:
        r = fargpu("pool", *cmd, "--pool", dead, "--json")
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert json.loads(r.stdout)["error"] == "unreachable", cmd
    for cmd in commands[4:]:
        r = fargpu("pool", *cmd, "--pool", tp.url, "--json")  # no admin token, the local (tenant) key: 403
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        body = json.loads(r.stdout)
        assert body["status"] == 403 and "FARGPU_ADMIN_TOKEN" in body["reason"], cmd


def test_column_names_say_what_they_show(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool()
    assert tp.pm is not None
    svc = tp.pm.service
    tp.call(svc.register_node("gpu-box-1", ["tcp://10.1.0.7:7100"], "sim", "", gpus(24, 24)))
    tp.call(svc.create_lease(LeaseRequest(vram_bytes=GiB, gpu_count=2), LOCAL))
    r = fargpu("pool", "leases", "--pool", tp.url)
    assert r.returncode == 0 and "GPU index" in r.stdout and "0,1" in r.stdout, r.stdout
    r = fargpu("pool", "nodes", "--pool", tp.url)
    assert r.returncode == 0 and "GPU count" in r.stdout, r.stdout


def test_docs_are_served_offline(threaded_pool: Callable[..., ThreadedPool]) -> None:
    tp = threaded_pool()
    for page in ("/docs", "/redoc"):
        r = httpx.get(tp.url + page)
        assert r.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
        assert urls, r.text
        assert not [u for u in urls if "//" in u], f"{page} loads from elsewhere: {urls}"
        for u in urls:
            assert httpx.get(tp.url + u).status_code == 200, u
        assert any(u.endswith(".js") for u in urls)


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_pool_manager_busy_port_is_one_line(flag: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), flag: str(port)}
        r = fargpu("pool-manager", "--memory-only", "--enrol-token", "t", *[x for kv in ports.items() for x in kv],
                   timeout=30)  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and flag in lines[0], r.stderr
