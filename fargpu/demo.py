"""`fargpu demo` (the main job): a single-machine pool — a pool manager on the embedded store and one
local node server (the real GPU if this machine has one, otherwise the simulated device, and it says
which) — and the demo CUDA program run through `fargpu run`, printing its results."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, pred: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and pred(r.json()):  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: {what} did not come up within {timeout:.0f}s")


def main(backend: str = "auto") -> int:
    py = [sys.executable, "-P"]
    tmp = Path(tempfile.mkdtemp(prefix="fargpu-demo-"))
    rest, grpc_port, node_port = _free_port(), _free_port(), _free_port()
    url = f"http://127.0.0.1:{rest}"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"== starting the pool manager (embedded store) on {url}")
        procs.append(subprocess.Popen(
            [*py, "-m", "fargpu.cli", "pool-manager", "--port", str(rest), "--grpc-port", str(grpc_port),
             "--memory-only"], env=env, stdout=(tmp / "pool.log").open("wb"), stderr=subprocess.STDOUT))
        _wait(url + "/v1/status", lambda d: True, "the pool manager")
        print("== starting a local node server")
        procs.append(subprocess.Popen(
            [*py, "-m", "fargpu.server", "--backend", backend, "--listen", f"127.0.0.1:{node_port}", "--pool", url],
            env=env, stdout=(tmp / "node.log").open("wb"), stderr=subprocess.STDOUT))
        _wait(url + "/v1/nodes", lambda d: bool(d), "the node server's registration")
        for line in (tmp / "node.log").read_text().splitlines():
            if "backend" in line or "NOTE" in line:
                print("   " + line)
                break
        print("== running the demo program: fargpu run --vram 64M -- python -m fargpu.demo_program")
        rc = subprocess.call([*py, "-m", "fargpu.cli", "run", "--pool", url, "--vram", "64M", "--",
                              *py, "-m", "fargpu.demo_program"], env=env)
        print(f"== demo program exit code {rc}; logs in {tmp}")
        return rc
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
