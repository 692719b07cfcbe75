"""`fargpu doctor`, each check through the console script with real processes and sockets: the stub missing from
or not first on the library path, another libcuda.so.1 loaded instead of the stub, an unreachable node and pool,
a refused token and admin token, a version skew (stub against server, and a node that refuses this fargpu's API
table), busy ports, a missing Redis, no GPU where one was expected, a missing enrolment token, and a set-up where
nothing is wrong (a real node server on the simulated device)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import NodeServer, free_port, start_server, stop_server

from fargpu import paths
from fargpu.protocol.generated.ops import OPS_HASH
from fargpu.protocol.handshake import hello_err
from fargpu.protocol.wire import HEADER_SIZE, decode_header

FARGPU = str(Path(sys.executable).parent / "fargpu")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "LD_LIBRARY_PATH", "FARGPU_SERVER", "FARGPU_TOKEN", "FARGPU_POOL_URL",
              "FARGPU_ADMIN_TOKEN", "FARGPU_ENROL_TOKEN", "FARGPU_NATIVE_DIR"):  # fmt: skip
        env.pop(k, None)
    env.update(extra)
    return env


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
    """Runs `fargpu doctor --json ...`; returns the exit code and the checks by name (the last of each name)."""
    r = subprocess.run([FARGPU, "doctor", "--json", *args], env=env or _env(), capture_output=True, text=True,
                       timeout=120, cwd="/")  # fmt: skip
    doc = json.loads(r.stdout)
    assert doc["ok"] == (r.returncode == 0), r.stdout
    return r.returncode, {c["name"]: c for c in doc["checks"]}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    s = start_server(tmp_path_factory.mktemp("doctor-node"))
    yield s
    stop_server(s)


def _stub_env(node: NodeServer, **extra: str) -> dict[str, str]:
    base = {"LD_LIBRARY_PATH": str(paths.stub_dir()), "FARGPU_SERVER": node.endpoint, "FARGPU_TOKEN": node.token}
    return _env(**{**base, **extra})


def test_a_good_client_set_up_passes_and_the_table_prints(node: NodeServer) -> None:
    rc, checks = doctor("--role", "client", env=_stub_env(node))
    assert rc == 0, checks
    assert {k: checks[k]["status"] for k in ("stub", "driver", "node", "token")} == dict.fromkeys(
        ("stub", "driver", "node", "token"), "ok"
    )
    assert checks["gpu"]["status"] == "warn" and "simulated" in checks["gpu"]["detail"]
    r = subprocess.run([FARGPU, "doctor"], env=_stub_env(node), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "nothing wrong found" in r.stdout


def test_no_gpu_where_one_was_expected(node: NodeServer) -> None:
    rc, checks = doctor("--expect-gpu", env=_stub_env(node))
    assert rc == 1 and checks["gpu"]["status"] == "fail" and "simulated" in checks["gpu"]["detail"]
    rc, checks = doctor("--role", "node", "--backend", "cuda", "--listen", "", "--metrics-port", "-1",
                        env=_env(FARGPU_CUDA_DRIVER="/nonexistent/libcuda.so.1"))  # fmt: skip
    assert rc == 1 and checks["gpu"]["status"] == "fail" and "no GPU" in checks["gpu"]["detail"]
    assert "--backend sim" in checks["gpu"]["fix"]


def test_stub_not_first_and_another_driver_loaded(node: NodeServer, tmp_path: Path) -> None:
    other = tmp_path / "drivers"
    other.mkdir()
    (other / "libcuda.so.1").symlink_to(paths.sim_lib())  # a driver-API library that is not the stub
    env = _stub_env(node, LD_LIBRARY_PATH=f"{other}:{paths.stub_dir()}")
    rc, checks = doctor(env=env)
    assert rc == 1
    assert checks["stub"]["status"] == "fail" and str(other / "libcuda.so.1") in checks["stub"]["detail"]
    assert checks["driver"]["status"] == "fail" and "not the fargpu stub" in checks["driver"]["detail"]
    assert str(paths.stub_dir()) in checks["driver"]["fix"]
    rc, checks = doctor(env=_env(FARGPU_SERVER=node.endpoint))  # stub not on the path at all
    assert rc == 1 and checks["stub"]["status"] == "fail" and "not on LD_LIBRARY_PATH" in checks["stub"]["detail"]


def test_stub_not_installed(node: NodeServer, tmp_path: Path) -> None:
    rc, checks = doctor(env=_stub_env(node, FARGPU_NATIVE_DIR=str(tmp_path)))
    assert rc == 1 and checks["stub"]["status"] == "fail" and "not installed" in checks["stub"]["detail"]


def test_unreachable_node_and_pool() -> None:
    dead = f"127.0.0.1:{free_port()}"
    rc, checks = doctor("--server", dead, "--pool", f"http://{dead}")
    assert rc == 1
    assert checks["node"]["status"] == "fail" and f"cannot reach the node server at {dead}" in checks["node"]["detail"]
    assert checks["pool"]["status"] == "fail" and "cannot reach the pool manager" in checks["pool"]["detail"]


def test_refused_token(node: NodeServer) -> None:
    rc, checks = doctor(env=_stub_env(node, FARGPU_TOKEN="not-the-token"))
    assert rc == 1 and checks["token"]["status"] == "fail" and "refused the token" in checks["token"]["detail"]


def _fake_node(reply: bytes) -> tuple[str, threading.Thread]:
    """A socket that reads one HELLO and answers `reply` (a node server of another fargpu version)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):  # the reachability probe, then the handshake
            conn, _ = srv.accept()
            with conn:
                head = conn.recv(HEADER_SIZE)
                if head:
                    n = decode_header(head).length
                    while n > 0:
                        n -= len(conn.recv(n))
                    conn.sendall(reply)
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"127.0.0.1:{srv.getsockname()[1]}", t


def test_version_skew(node: NodeServer, tmp_path: Path) -> None:
    endpoint, t = _fake_node(hello_err(f"the stub's API table ({OPS_HASH!r}) differs from the server's "
                                       "('0123456789abcdef'): use a stub and server from the same fargpu version"))
    rc, checks = doctor("--server", endpoint, "--token", "t")
    t.join(10)
    assert rc == 1 and checks["version"]["status"] == "fail" and "API table" in checks["version"]["detail"]
    native = tmp_path / "native"
    shutil.copytree(paths.native_dir(), native, symlinks=True)
    stub = native / "stub" / "libcuda.so.1"
    data = stub.read_bytes()
    stub.unlink()  # a link (in some builds) must not write through to the installed stub
    stub.write_bytes(data.replace(OPS_HASH.encode(), b"0123456789abcdef"))
    rc, checks = doctor(env=_stub_env(node, FARGPU_NATIVE_DIR=str(native), LD_LIBRARY_PATH=str(stub.parent)))
    assert rc == 1 and checks["version"]["status"] == "fail" and "0123456789abcdef" in checks["version"]["detail"]


def test_busy_ports() -> None:
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        rc, checks = doctor("--role", "node", "--backend", "sim", "--listen", f"127.0.0.1:{pa}", "--metrics-port",
                            str(pb))  # fmt: skip
        assert rc == 1
        assert checks[f"port {pa}"]["status"] == "fail" and "--listen" in checks[f"port {pa}"]["fix"]
        assert checks[f"port {pb}"]["status"] == "fail" and "--metrics-port" in checks[f"port {pb}"]["fix"]
        assert f"pid {os.getpid()}" in checks[f"port {pa}"]["detail"]  # who holds it
        rc, checks = doctor("--role", "pool-manager", "--port", str(pa), "--grpc-port", str(free_port()))
        assert rc == 1 and checks[f"port {pa}"]["status"] == "fail" and "--port" in checks[f"port {pa}"]["fix"]
    rc, checks = doctor("--role", "pool-manager", "--port", str(free_port()), "--grpc-port", str(free_port()))
    assert rc == 0, checks


def test_missing_redis(redis_server_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ports = ["--port", str(free_port()), "--grpc-port", str(free_port())]
    rc, checks = doctor("--role", "pool-manager", *ports, "--store", "redis", "--redis-url", dead)
    assert rc == 1 and checks["redis"]["status"] == "fail" and "redis-server" in checks["redis"]["fix"]
    rc, checks = doctor("--role", "pool-manager", *ports, "--store", "redis", "--redis-url", redis_server_url)
    assert rc == 0 and checks["redis"]["status"] == "ok"


@pytest.fixture
def redis_server_url(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run scripts/setup_redis.sh")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


def test_pool_without_nodes_bad_admin_token_and_enrolment(tmp_path: Path) -> None:
    rest, grpc = free_port(), free_port()
    proc = subprocess.Popen([FARGPU, "pool-manager", "--port", str(rest), "--grpc-port", str(grpc), "--memory-only"],
                            env=_env(FARGPU_ADMIN_TOKEN="right"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{rest}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        rc, checks = doctor("--pool", url, "--admin-token", "wrong")
        assert rc == 1 and checks["pool"]["status"] == "ok"
        assert checks["gpu"]["status"] == "fail" and "no node up" in checks["gpu"]["detail"]
        assert checks["admin token"]["status"] == "fail"
        rc, checks = doctor("--pool", url, "--admin-token", "right")
        assert checks["admin token"]["status"] == "ok"
        node_args = ["--role", "node", "--backend", "sim", "--listen", "", "--metrics-port", "-1", "--pool", url]
        rc, checks = doctor(*node_args)  # the pool manager wrote the enrolment token into this test's state dir
        assert rc == 0 and checks["enrol token"]["status"] == "ok", checks
        rc, checks = doctor(*node_args, env=_env(XDG_STATE_HOME=str(tmp_path / "elsewhere")))
        assert rc == 1 and checks["enrol token"]["status"] == "fail"
    finally:
        proc.terminate()
        proc.wait(15)
