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

from fargpu.pool_manager.tenants import find_api_key
from fargpu.pool_manager.tls import verify_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, pred: object, what: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None,
          log: Path | None = None) -> None:
    """Polls `url` until `pred(json)`; if `proc` (logging to `log`) ends first, says why it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and log is not None and proc.poll() is not None:  # it ended: say why, now
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            why = next((x for x in reversed(lines) if "error" in x.lower()), lines[-1] if lines else "no output")
            raise SystemExit(f"demo: {what} exited with code {proc.returncode}: {why} (log: {log})")
        try:
            key = find_api_key()  # the pool manager's local key, once it has written it
            auth = {"Authorization": f"Bearer {key}"} if key else None
            r = httpx.get(url, timeout=2, verify=verify_for(url), headers=auth)
            if r.status_code == 200 and pred(r.json()):  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: {what} did not come up within {timeout:.0f}s")


def path_hint() -> str:
    """One line: how to get `fargpu` on PATH in the user's shell (it lives in the virtual environment)."""
    bindir = Path(sys.prefix) / "bin"
    if sys.prefix == sys.base_prefix:  # not a virtual environment: pip put the script on the usual PATH
        return f"== `fargpu` is installed in {bindir}"
    return f"== to get `fargpu` on PATH in this shell, run: . {bindir / 'activate'}  (or: export PATH={bindir}:$PATH)"


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
        _wait(url + "/v1/status", lambda d: True, "the pool manager", proc=procs[-1], log=tmp / "pool.log")
        print("== starting a local node server")
        procs.append(subprocess.Popen(
            [*py, "-m", "fargpu.server", "--backend", backend, "--listen", f"127.0.0.1:{node_port}", "--pool", url,
             "--metrics-port", "0"],
            env=env, stdout=(tmp / "node.log").open("wb"), stderr=subprocess.STDOUT))
        _wait(url + "/v1/nodes", lambda d: bool(d), "the node server", proc=procs[-1], log=tmp / "node.log")
        for line in (tmp / "node.log").read_text().splitlines():
            if "backend" in line or "NOTE" in line:
                print("   " + line)
                break
        print("== running the demo program: fargpu run --vram 64M -- python -m fargpu.demo_program")
        rc = subprocess.call([*py, "-m", "fargpu.cli", "run", "--pool", url, "--vram", "64M", "--",
                              *py, "-m", "fargpu.demo_program"], env=env)
        print(f"== demo program exit code {rc}; logs in {tmp}")
        print(path_hint())
        return rc
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
