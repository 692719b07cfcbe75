"""`fargpu run` as a user runs it (a subprocess) against a pool manager: the child's environment (endpoint,
token, stub on LD_PRELOAD/LD_LIBRARY_PATH), exit codes, renewal past the TTL, release at the end and on
SIGTERM/SIGINT (forwarded to the child), and clear failures: missing stub, unreachable pool, no capacity,
unknown command. The stub is a placeholder file here: these tests are about the lease around the command."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ThreadedPool, free_port, gpus, subprocess_env

from fargpu.pool_manager.models import LeaseRecord, LeaseState
from fargpu.pool_manager.tokens import token_matches
from fargpu.run import pick_endpoint, server_address

GiB = 1 << 30

DUMP_ENV = (
    "import json, os, sys; "
    "keys = ['FARGPU_SERVER', 'FARGPU_TOKEN', 'FARGPU_LEASE_ID', 'LD_PRELOAD', 'LD_LIBRARY_PATH']; "
    "json.dump({k: os.environ.get(k) for k in keys}, open(sys.argv[1], 'w')); sys.exit(int(sys.argv[2]))"
)


@pytest.fixture
def native(tmp_path: Path) -> Path:
    stub = tmp_path / "native" / "stub"
    stub.mkdir(parents=True)
    (stub / "libcuda.so.1").write_bytes(b"")
    return tmp_path / "native"


@pytest.fixture
def node_port() -> Iterator[int]:
    """A port that accepts connections (`fargpu run` checks the node's endpoint before it starts CMD)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.fixture
def pool(threaded_pool: Callable[..., ThreadedPool], node_port: int) -> ThreadedPool:
    # n1 never heartbeats: keep it up however slow (and no re-adoption window, in which nothing would expire)
    tp = threaded_pool(sweep_interval_s=0.1, heartbeat_timeout_s=3600.0, adopt_grace_s=0.0)
    assert tp.pm is not None
    tp.call(tp.pm.service.register_node("n1", [f"tcp://127.0.0.1:{node_port}"], "sim", "", gpus(16)))
    return tp


def fargpu_run(
    pool_url: str, native: Path, *args: str, wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    env = subprocess_env()
    env["FARGPU_NATIVE_DIR"] = str(native)
    env.pop("LD_PRELOAD", None)
    argv = [sys.executable, "-m", "fargpu.cli", "run", "--pool", pool_url, *args]
    # cwd: not the repo root, whose bare `fargpu/` folder would shadow the mapped package
    if wait:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=native.parent)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=native.parent)


def leases(tp: ThreadedPool) -> list[LeaseRecord]:
    assert tp.pm is not None
    return tp.call(tp.pm.service.list_leases(include_ended=True))  # type: ignore[return-value]


def test_runs_command_with_lease_env_and_exit_code(
    pool: ThreadedPool, native: Path, tmp_path: Path, node_port: int
) -> None:
    out = tmp_path / "env.json"
    r = fargpu_run(pool.url, native, "--vram", "4G", "--", sys.executable, "-c", DUMP_ENV, str(out), "7")
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 7, r.stderr
    env = json.loads(out.read_text())
    (lease,) = leases(pool)
    assert env["FARGPU_SERVER"] == f"127.0.0.1:{node_port}" and env["FARGPU_LEASE_ID"] == lease.lease_id
    assert token_matches(env["FARGPU_TOKEN"], lease.token_hash)
    assert env["LD_PRELOAD"].split(":")[0] == str(native / "stub" / "libcuda.so.1")
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(native / "stub")
    assert lease.vram_bytes == 4 * GiB and lease.state == LeaseState.released
    assert env["FARGPU_TOKEN"] not in r.stderr


def test_renews_while_command_runs(pool: ThreadedPool, native: Path) -> None:
    r = fargpu_run(pool.url, native, "--ttl", "1", "--", sys.executable, "-c", "import time; time.sleep(2.5)")
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 0, r.stderr
    (lease,) = leases(pool)
    assert lease.state == LeaseState.released, lease.end_reason  # not expired: renewals carried it past 1 s


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_forwarded_and_lease_released(pool: ThreadedPool, native: Path, tmp_path: Path, sig: int) -> None:
    flag = tmp_path / "started"
    child = (
        "import signal, sys, time, pathlib; "
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); "
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(43)); "
        f"pathlib.Path({str(flag)!r}).touch(); time.sleep(30)"
    )
    proc = fargpu_run(pool.url, native, "--", sys.executable, "-c", child, wait=False)
    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + 20
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [x.state for x in leases(pool)] == [LeaseState.active]
    proc.send_signal(sig)
    assert proc.wait(20) == (42 if sig == signal.SIGTERM else 43)
    assert [x.state for x in leases(pool)] == [LeaseState.released]


def test_lease_ended_by_the_pool_is_reported(pool: ThreadedPool, native: Path, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    child = f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(1.5)"
    proc = fargpu_run(pool.url, native, "--ttl", "1", "--", sys.executable, "-c", child, wait=False)
    assert isinstance(proc, subprocess.Popen)
    while not flag.exists():
        assert proc.poll() is None
        time.sleep(0.05)
    (lease,) = leases(pool)
    assert pool.pm is not None
    pool.call(pool.pm.service.evict_lease(lease.lease_id, "node maintenance"))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "the lease ended" in err and "evicted by an operator: node maintenance" in err


def test_missing_stub_fails_before_leasing(pool: ThreadedPool, tmp_path: Path) -> None:
    r = fargpu_run(pool.url, tmp_path / "no-native", "--", "true")
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 125 and "the fargpu libcuda stub" in r.stderr and "not found" in r.stderr
    assert leases(pool) == []


def test_unreachable_pool_and_no_capacity_and_unknown_command(pool: ThreadedPool, native: Path) -> None:
    r = fargpu_run(f"http://127.0.0.1:{free_port()}", native, "--", "true")
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 125 and "cannot reach the pool manager" in r.stderr
    r = fargpu_run(pool.url, native, "--vram", "64G", "--", "true")
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 125 and "no lease: no GPU in the pool has 64.0 GiB" in r.stderr
    r = fargpu_run(pool.url, native, "--", "/nonexistent/cmd")
    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 127 and "command not found" in r.stderr
    assert [x.state for x in leases(pool)] == [LeaseState.released]


def test_endpoint_choice(tmp_path: Path) -> None:
    sock = tmp_path / "node.sock"
    sock.touch()
    assert server_address("tcp://10.0.0.5:7100") == "10.0.0.5:7100"
    assert server_address("unix:///run/x.sock") == "/run/x.sock"
    assert pick_endpoint(["tcp://10.0.0.5:7100", f"unix://{sock}"]) == str(sock)  # same host: the socket
    assert pick_endpoint(["unix:///elsewhere/x.sock", "tcp://10.0.0.5:7100"]) == "10.0.0.5:7100"
