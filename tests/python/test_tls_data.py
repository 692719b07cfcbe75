"""TLS on the data socket, end to end with real processes and sockets (simulated device): the stub (C, the system's
OpenSSL loaded at run time) speaks TLS to a node server that terminates it and relays to the worker. Every copy
kind and size arrives byte-exact through TLS with bulk copies striped over three TLS connections; a client with
the wrong CA refuses the node; a plaintext client from another machine's address is refused with one line while
one on loopback is served (one-machine policy); a TLS client at a plaintext node says so. Then the whole chain
with a TLS pool: the pool serves HTTPS, the node enrols over HTTPS and serves its data socket with the certificate
the pool issued, and `fargpu run` and the stub's own lease (HTTPS from C) reach it over TLS."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, free_port, run_client, start_server, stop_server
from loopback_relay import LoopbackRelay
from test_transports import COPIES

from fargpu import paths
from fargpu.demo import _wait

SMALL = PRELUDE + r'''
ctx0(); r, p = alloc(1 << 20); ok(r, "alloc")
data = bytes(range(256)) * 4096
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), data, ctypes.c_size_t(len(data))), "htod")
back = ctypes.create_string_buffer(len(data))
ok(cu.cuMemcpyDtoH_v2(back, ctypes.c_uint64(p), ctypes.c_size_t(len(data))), "dtoh")
print("SAME" if back.raw == data else "DIFFERENT", flush=True)
'''


def other_address() -> str | None:
    """This machine's address on a non-loopback interface (a client from it is "another machine")."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        addr = str(s.getsockname()[0])
        if not addr.startswith("127."):
            return addr
    return None


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls-state")


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, state: Path) -> Iterator[NodeServer]:
    """A node listening on every address with TLS on (its certificate from this machine's development CA)."""
    port = free_port()
    s = start_server(tmp_path_factory.mktemp("tls-node"), "--listen", f"0.0.0.0:{port}", "--tls", "on",
                     env_extra={"XDG_STATE_HOME": str(state)}, port=port)  # fmt: skip
    yield s
    stop_server(s)


def ca(state: Path) -> str:
    return str(state / "fargpu" / "tls" / "ca.pem")


def test_every_copy_through_tls_is_byte_exact(tls_node: NodeServer, state: Path) -> None:
    env = tls_node.client_env(FARGPU_SERVER=f"tls://{tls_node.endpoint}", FARGPU_TLS_CA=ca(state),
                              FARGPU_STREAMS="3", SEED="7", FARGPU_LOG="debug")  # fmt: skip
    res = run_client(COPIES, env, timeout=180)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr[-3000:]
    assert "TLS to 127.0.0.1 established" in res.stderr


class Tap(LoopbackRelay):
    """A TCP proxy on loopback that records every byte the client sends (what someone on the network sees)."""

    chunk = 65536

    def __init__(self, target_port: int) -> None:
        self.seen = bytearray()
        super().__init__(target_port)

    def _forward(self, data: bytes, to: socket.socket, up: bool) -> None:
        if up:
            self.seen += data
        to.sendall(data)


def test_the_wire_carries_no_token_and_no_data_in_clear(tls_node: NodeServer, state: Path) -> None:
    port = int(tls_node.endpoint.rpartition(":")[2])
    marker = b"fargpu-plaintext-marker-"
    code = SMALL.replace("data = bytes(range(256)) * 4096", f"data = {marker!r} * 40000")
    plain = Tap(port)  # first, that the tap sees what a plaintext client sends
    res = run_client(code, tls_node.client_env(FARGPU_SERVER=f"127.0.0.1:{plain.port}"))
    assert "SAME" in res.stdout and tls_node.token.encode() in plain.seen and marker in plain.seen
    tap = Tap(port)
    res = run_client(code, tls_node.client_env(FARGPU_SERVER=f"tls://127.0.0.1:{tap.port}", FARGPU_TLS_CA=ca(state)))
    assert "SAME" in res.stdout, res.stderr
    assert len(tap.seen) > 40000 * len(marker)  # the data went through the tap, encrypted
    assert tls_node.token.encode() not in tap.seen and marker not in tap.seen


def test_a_tls_client_killed_mid_copy_leaves_no_relay_behind(tls_node: NodeServer, state: Path) -> None:
    pid = tls_node.proc.pid

    def counts() -> tuple[int, int]:  # the node server's descriptors and threads
        return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))

    env = tls_node.client_env(FARGPU_SERVER=f"tls://{tls_node.endpoint}", FARGPU_TLS_CA=ca(state), FARGPU_STREAMS="3")
    assert "SAME" in run_client(SMALL, env).stdout  # warm: the relay library is loaded, threads made once
    time.sleep(0.5)
    before = counts()
    loop = PRELUDE + r'''
ctx0(); r, p = alloc(64 << 20); ok(r, "alloc")
buf = ctypes.create_string_buffer(64 << 20)
print("COPYING", flush=True)
while True:
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), buf, ctypes.c_size_t(64 << 20)), "htod")
'''
    client = subprocess.Popen([sys.executable, "-P", "-c", loop], env=env, stdout=subprocess.PIPE, text=True, cwd="/")
    assert client.stdout is not None and client.stdout.readline().strip() == "COPYING"
    time.sleep(1.0)
    assert counts()[1] > before[1]  # relay threads at work for the session and its data connections
    client.send_signal(signal.SIGKILL)
    client.wait(10)
    deadline = time.monotonic() + 15
    while counts() != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts() == before, (counts(), before)


def test_the_wrong_ca_refuses_the_node(tls_node: NodeServer, tmp_path: Path) -> None:
    from fargpu.pool_manager.tls_ca import CertificateAuthority

    other = CertificateAuthority.load_or_create(tmp_path / "other")
    env = tls_node.client_env(FARGPU_SERVER=f"tls://{tls_node.endpoint}", FARGPU_TLS_CA=str(other.cert_file))
    res = run_client(SMALL, env)
    assert res.returncode != 0 and "SAME" not in res.stdout
    assert "is not trusted" in res.stderr and "FARGPU_TLS_CA" in res.stderr, res.stderr


def test_plaintext_from_another_machine_is_refused_in_one_line(tls_node: NodeServer) -> None:
    addr = other_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to come from")
    port = tls_node.endpoint.rpartition(":")[2]
    res = run_client(SMALL, tls_node.client_env(FARGPU_SERVER=f"{addr}:{port}"))
    assert res.returncode != 0 and "SAME" not in res.stdout
    line = next(x for x in res.stderr.splitlines() if "refused the session" in x)
    assert "this node requires TLS for connections from other machines: use its endpoint tls://" in line, line
    assert "refused a plaintext client" in tls_node.log_text()


def test_plaintext_on_loopback_is_served(tls_node: NodeServer) -> None:
    res = run_client(SMALL, tls_node.client_env())  # 127.0.0.1: the one-machine policy keeps it plaintext
    assert res.returncode == 0 and "SAME" in res.stdout, res.stdout + res.stderr


def test_tls_at_a_plaintext_node_says_so(tmp_path: Path) -> None:
    node = start_server(tmp_path, "--tls", "off")
    try:
        res = run_client(SMALL, node.client_env(FARGPU_SERVER=f"tls://{node.endpoint}"))
    finally:
        stop_server(node)
    assert res.returncode != 0 and "does not speak TLS" in res.stderr, res.stderr


def test_a_tls_pool_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool over HTTPS and mTLS, a node whose data socket uses the certificate the pool issued, clients over TLS."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN", "FARGPU_API_KEY", "FARGPU_TLS_CA")}
    env |= {"XDG_STATE_HOME": str(tmp_path / "state"), "FARGPU_ENROL_TOKEN": "fge_tls-e2e-enrol-token-0123456789"}
    rest, grpc_port, node_port = free_port(), free_port(), free_port()
    url = f"https://127.0.0.1:{rest}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> None:
        procs.append(subprocess.Popen([sys.executable, "-P", "-m", "fargpu.cli", *args], env=env, cwd="/",
                                      stdout=(tmp_path / log).open("wb"), stderr=subprocess.STDOUT))  # fmt: skip

    try:
        start(["pool-manager", "--port", str(rest), "--grpc-port", str(grpc_port), "--memory-only", "--tls", "on"],
              "pool.log")  # fmt: skip
        monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])  # _wait's client finds the CA and key there
        _wait(url + "/healthz", lambda d: True, "the pool manager")
        start(["server", "--backend", "sim", "--listen", f"127.0.0.1:{node_port}", "--tls", "on", "--pool", url,
               "--metrics-port", "-1"], "node.log")  # fmt: skip
        _wait(url + "/v1/nodes", lambda d: any(n["state"] == "up" for n in d), "the node")
        logs = (tmp_path / "pool.log").read_text()
        assert "TLS on REST and gRPC (mTLS)" in logs, logs
        code = [sys.executable, "-P", "-c", SMALL]
        run = subprocess.run([sys.executable, "-P", "-m", "fargpu.cli", "run", "--pool", url, "--vram", "16M", "--",
                              *code], env=env, capture_output=True, text=True, timeout=120, cwd="/")  # fmt: skip
        assert run.returncode == 0 and "SAME" in run.stdout, run.stdout + run.stderr
        assert f"tls://127.0.0.1:{node_port}" in run.stderr, run.stderr  # the lease's endpoint speaks TLS
        stub = dict(env, LD_LIBRARY_PATH=str(paths.stub_dir()), FARGPU_POOL_URL=url, FARGPU_VRAM="16M",
                    FARGPU_LOG="debug")  # fmt: skip
        res = run_client(SMALL, stub)  # the stub leases by itself, over HTTPS from C, then TLS to the node
        assert res.returncode == 0 and "SAME" in res.stdout, res.stdout + res.stderr
        assert res.stderr.count("TLS to 127.0.0.1 established") >= 2, res.stderr  # the pool, then the node
        assert "enrolled" in (tmp_path / "node.log").read_text()
        plain = run_client(SMALL, dict(stub, FARGPU_POOL_URL=url.replace("https://", "http://")))
        assert plain.returncode != 0 and "use https:// in FARGPU_POOL_URL" in plain.stderr, plain.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
