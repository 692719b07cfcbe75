"""With only FARGPU_POOL_URL set, the stub leases for itself: a real pool manager (embedded store) and a
real node server registered with it; the client process gets a lease, runs on the node with the lease
token, and releases the lease when it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cuda_ctypes import PRELUDE
from e2e_helpers import free_port, run_client

from fargpu import paths
from fargpu.demo import _wait
from fargpu.pool_manager.tenants import find_api_key


def _key() -> dict[str, str]:
    return {"Authorization": f"Bearer {find_api_key()}"}

ADMIN = "admin-secret-for-tests"


def _pool(tmp_path: Path) -> tuple[str, dict[str, str], list[subprocess.Popen[bytes]]]:
    rest, grpc_port, node_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{rest}"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN")}
    procs = [subprocess.Popen([sys.executable, "-P", "-m", "fargpu.cli", "pool-manager", "--port", str(rest),
                               "--grpc-port", str(grpc_port), "--memory-only", "--admin-token", ADMIN], env=env,
                              stdout=(tmp_path / "pool.log").open("wb"), stderr=subprocess.STDOUT)]
    _wait(url + "/v1/status", lambda d: True, "the pool manager")
    procs.append(subprocess.Popen([sys.executable, "-P", "-m", "fargpu.server", "--backend", "sim", "--listen",
                                   f"127.0.0.1:{node_port}", "--pool", url, "--metrics-port", "-1"], env=env,
                                  stdout=(tmp_path / "node.log").open("wb"), stderr=subprocess.STDOUT))
    _wait(url + "/v1/nodes", lambda d: bool(d), "node registration")
    return url, env, procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        p.wait(20)


def test_evicted_lease_ends_the_session_with_a_reason(tmp_path: Path) -> None:
    url, env, procs = _pool(tmp_path)
    try:
        client_env = dict(env, LD_LIBRARY_PATH=str(paths.stub_dir()), FARGPU_POOL_URL=url, FARGPU_LOG="info")
        client = subprocess.Popen([sys.executable, "-P", "-c", PRELUDE + r'''
ctx0(); print("UP", flush=True)
sys.stdin.readline()
s = ctypes.c_void_p(); print("AFTER", cu.cuStreamCreate(ctypes.byref(s), 0), flush=True)
'''], env=client_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert client.stdout is not None and client.stdout.readline().strip() == "UP"
        lease_id = httpx.get(url + "/v1/leases", timeout=5, headers=_key()).json()[0]["lease_id"]
        r = httpx.post(f"{url}/v1/admin/leases/{lease_id}/evict", headers={"Authorization": f"Bearer {ADMIN}"},
                       timeout=5)
        assert r.status_code == 200, r.text
        time.sleep(3)  # the node gets the command and closes the session
        out, err = client.communicate("go\n", timeout=30)
        assert "AFTER 46" in out, out + err  # CUDA_ERROR_DEVICE_UNAVAILABLE, no hang
        assert "the server closed the session" in err, err
    finally:
        _stop(procs)


def test_stub_leases_by_itself(tmp_path: Path) -> None:
    url, env, procs = _pool(tmp_path)
    try:
        client_env = dict(env, LD_LIBRARY_PATH=str(paths.stub_dir()), FARGPU_POOL_URL=url, FARGPU_VRAM="64M",
                          FARGPU_LOG="info")
        res = run_client(PRELUDE + r'''
ctx0(); r, p = alloc(16 << 20); ok(r, "alloc"); r2, p2 = alloc(128 << 20); print("OK", r2)
''', client_env)
        assert res.returncode == 0 and res.stdout.split() == ["OK", "2"], (  # 64M quota
            res.stdout + res.stderr + (tmp_path / "node.log").read_text(errors="replace"))
        assert "leased lease-" in res.stderr and "released lease lease-" in res.stderr
        lease_id = res.stderr.split("leased ", 1)[1].split()[0]
        view = httpx.get(f"{url}/v1/leases/{lease_id}", timeout=5, headers=_key()).json()
        assert view["state"] not in ("active", "pending"), view  # released when the client exited
    finally:
        _stop(procs)
