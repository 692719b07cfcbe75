"""Shared helpers for the end-to-end tests: a real node server (simulated-device backend) on a free port,
and the environment a client process needs to load the fargpu stub as its libcuda.so.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fargpu import paths

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NodeServer:
    endpoint: str
    token: str
    log: Path
    launch_log: Path
    proc: subprocess.Popen[bytes]

    def client_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env["LD_LIBRARY_PATH"] = f"{paths.stub_dir()}:{env.get('LD_LIBRARY_PATH', '')}"
        env["FARGPU_SERVER"] = self.endpoint
        env["FARGPU_TOKEN"] = self.token
        env.update(extra)
        return env

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(tmp: Path, *extra: str, token: str = "test-token-123", env_extra: dict[str, str] | None = None,
                 port: int = 0) -> NodeServer:
    port = port or free_port()
    log = tmp / f"server-{port}.log"
    env = dict(os.environ, FARGPU_TOKEN=token, FARGPU_SIM_LAUNCH_LOG=str(tmp / "launches.jsonl"), **(env_extra or {}))
    env.pop("LD_PRELOAD", None)
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "fargpu.server", "--backend", "sim", "--listen", f"127.0.0.1:{port}",
         "--metrics-port", "0", *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node server exited early:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return NodeServer(f"127.0.0.1:{port}", token, log, tmp / "launches.jsonl", proc)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"node server did not start:\n{log.read_text()}")


def stop_server(s: NodeServer) -> None:
    s.proc.send_signal(signal.SIGTERM)
    try:
        s.proc.wait(15)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NodeServer]:
    """A node server on the simulated device for one test (its own log and launch record in tmp_path)."""
    s = start_server(tmp_path)
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def node_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    s = start_server(tmp_path_factory.mktemp("node"))
    yield s
    stop_server(s)


def run_client(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a Python client snippet (it loads libcuda.so.1 through ctypes, i.e. the fargpu stub)."""
    return subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def start_client(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a Python client snippet that the test talks to: its stdin, stdout and stderr are pipes (text)."""
    return subprocess.Popen([sys.executable, "-P", "-c", code], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


def wait_log(s: NodeServer, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """The first match of pattern in the node's log, once it is there; fails after timeout seconds with the log's
    end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, s.log_text())
        if m:
            return m
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the node log:\n{s.log_text()[-4000:]}")


def wait_process_gone(pid: int, what: str, timeout: float = 20.0) -> None:
    """Waits until process `pid` has exited; fails with `what` (the process outlived what it must not) if it has not
    within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(what)
