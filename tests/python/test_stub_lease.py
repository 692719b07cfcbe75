"""With only FARGPU_POOL_URL set, the stub leases for itself: a real pool manager (embedded store) and a
real node server registered with it; the client process gets a lease, runs on the node with the lease
token, and releases the lease when it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from cuda_ctypes import PRELUDE
from e2e_helpers import free_port, run_client

from fargpu import paths
from fargpu.demo import _wait


def test_stub_leases_by_itself(tmp_path: Path) -> None:
    rest, grpc_port, node_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{rest}"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN")}
    procs = [subprocess.Popen([sys.executable, "-P", "-m", "fargpu.cli", "pool-manager", "--port", str(rest),
                               "--grpc-port", str(grpc_port), "--memory-only"], env=env,
                              stdout=(tmp_path / "pool.log").open("wb"), stderr=subprocess.STDOUT)]
    try:
        _wait(url + "/v1/status", lambda d: True, "the pool manager")
        procs.append(subprocess.Popen([sys.executable, "-P", "-m", "fargpu.server", "--backend", "sim", "--listen",
                                       f"127.0.0.1:{node_port}", "--pool", url, "--metrics-port", "-1"], env=env,
                                      stdout=(tmp_path / "node.log").open("wb"), stderr=subprocess.STDOUT))
        _wait(url + "/v1/nodes", lambda d: bool(d), "node registration")
        client_env = dict(env, LD_LIBRARY_PATH=str(paths.stub_dir()), FARGPU_POOL_URL=url, FARGPU_VRAM="64M",
                          FARGPU_LOG="info")
        res = run_client(PRELUDE + r'''
ctx0(); r, p = alloc(16 << 20); ok(r, "alloc"); r2, p2 = alloc(128 << 20); print("OK", r2)
''', client_env)
        assert res.returncode == 0 and res.stdout.split() == ["OK", "2"], res.stdout + res.stderr  # 64M quota
        assert "leased lease-" in res.stderr and "released lease lease-" in res.stderr
        lease_id = res.stderr.split("leased ", 1)[1].split()[0]
        view = httpx.get(f"{url}/v1/leases/{lease_id}", timeout=5).json()
        assert view["state"] not in ("active", "pending"), view  # released when the client exited
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait(20)
