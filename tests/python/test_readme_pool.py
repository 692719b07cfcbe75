"""The README's one-machine pool, started with the very commands it shows: `fargpu pool-manager`, then
`fargpu server --backend sim --listen 127.0.0.1:PORT --pool http://127.0.0.1:PORT` (the installed console
script, not `python -m`), then many `fargpu run` clients, several at a time. Every client must pass and no
session worker may die by a signal: under `fargpu server` about one session in twenty used to crash (SIGSEGV
before exec: gRPC's fork handlers restarted its threads in the forked child). Also: starting workers never
runs fork handlers, even with gRPC's fork support forced on in the node server's process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2e_helpers import free_port

from fargpu.demo import _wait

SESSIONS = 32
AT_ONCE = 8


def _fargpu() -> str:
    exe = shutil.which("fargpu") or str(Path(sys.executable).with_name("fargpu"))
    assert Path(exe).exists(), "the `fargpu` console script is not installed beside this Python"
    return exe


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN", "FARGPU_ENROL_TOKEN")}
    # XDG_STATE_HOME: the test's own (tests/python/conftest.py), where this process finds the pool's local key too
    env.update(XDG_RUNTIME_DIR=str(tmp), FARGPU_METRICS_PORT="0")
    env.update(extra)
    return env


def _readme_pool(tmp: Path, node_env: dict[str, str] | None = None) -> tuple[str, list[subprocess.Popen[bytes]]]:
    fargpu = _fargpu()
    rest, grpc_port, node_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{rest}"
    env = _env(tmp)
    procs = [subprocess.Popen([fargpu, "pool-manager", "--port", str(rest), "--grpc-port", str(grpc_port)],
                              env=env, cwd=tmp, stdout=(tmp / "pool.log").open("wb"), stderr=subprocess.STDOUT)]
    _wait(url + "/v1/status", lambda d: True, "the pool manager")
    procs.append(subprocess.Popen(
        [fargpu, "server", "--backend", "sim", "--listen", f"127.0.0.1:{node_port}", "--pool", url],
        env=node_env or env, cwd=tmp, stdout=(tmp / "node.log").open("wb"), stderr=subprocess.STDOUT))
    _wait(url + "/v1/nodes", lambda d: bool(d), "the node server's registration")
    return url, procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_sessions(tmp: Path, url: str, n: int) -> list[subprocess.CompletedProcess[str]]:
    cmd = [_fargpu(), "run", "--pool", url, "--vram", "64M", "--", sys.executable, "-m", "fargpu.demo_program"]

    def one(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(AT_ONCE) as ex:
        return list(ex.map(one, range(n)))


def _check_node_log(log: str, sessions: int) -> None:
    exits = re.findall(r"ended \(worker exit (-?\d+)\)", log)
    assert len(exits) == sessions, f"{len(exits)} session ends logged for {sessions} sessions:\n{log[-3000:]}"
    killed = [e for e in exits if int(e) < 0]
    assert not killed, f"{len(killed)} worker(s) died by a signal ({killed}):\n{log[-3000:]}"
    assert "fork() handlers" not in log, "gRPC fork handlers ran while starting a session worker"


def test_readme_commands_run_many_sessions_without_a_crash(tmp_path: Path) -> None:
    url, procs = _readme_pool(tmp_path)
    try:
        results = _run_sessions(tmp_path, url, SESSIONS)
        time.sleep(1)  # the last workers' exits reach the log
    finally:
        _stop(procs)
    log = (tmp_path / "node.log").read_text(errors="replace")
    failed = [r for r in results if r.returncode != 0 or "all correct" not in r.stdout]
    assert not failed, f"{len(failed)} of {SESSIONS} runs failed; first: {failed[0].stdout}{failed[0].stderr}"
    _check_node_log(log, SESSIONS)


def test_workers_start_without_fork_handlers_even_with_grpc_fork_support_on(tmp_path: Path) -> None:
    # The node server's process with gRPC's fork support forced on: workers still start clean, because they are
    # started with posix_spawn, which runs no fork handlers.
    url, procs = _readme_pool(tmp_path, node_env=_env(tmp_path, GRPC_ENABLE_FORK_SUPPORT="true"))
    try:
        results = _run_sessions(tmp_path, url, 16)
        time.sleep(1)
    finally:
        _stop(procs)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    _check_node_log((tmp_path / "node.log").read_text(errors="replace"), 16)
