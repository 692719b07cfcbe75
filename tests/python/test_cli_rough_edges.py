"""Issue 16's rough edges on the node side, through the `fargpu` console script with real processes and sockets:
a busy listen or metrics port is one line naming the port and its flag and the node never registers with the
pool; a node on 0.0.0.0 advertises a reachable address (or --advertise); --metrics-host binds /metrics; and
`fargpu demo` ends with the line that puts `fargpu` on PATH."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_helpers import free_port

FARGPU = str(Path(sys.executable).parent / "fargpu")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN", "FARGPU_POOL_URL", "FARGPU_ADMIN_TOKEN"):
        env.pop(k, None)
    return env


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[str]:
    """A real pool manager process (memory-only store); node servers on this machine find its enrolment token."""
    rest, grpc = free_port(), free_port()
    proc = subprocess.Popen(
        [FARGPU, "pool-manager", "--port", str(rest), "--grpc-port", str(grpc), "--memory-only"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=(tmp_path / "pool.log").open("wb"), cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{rest}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "pool.log").read_text()
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(15)


def _nodes(url: str) -> list[dict[str, object]]:
    from fargpu.pool_manager.tenants import find_api_key

    auth = {"Authorization": f"Bearer {find_api_key()}"}
    result: list[dict[str, object]] = httpx.get(url + "/v1/nodes", headers=auth).json()
    return result


def _server(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FARGPU, "server", "--backend", "sim", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, cwd="/")  # fmt: skip


def _busy_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("which", ["--metrics-port", "--listen"])
def test_busy_port_is_one_line_and_the_node_never_registers(pool: str, which: str) -> None:
    with _busy_socket() as busy:
        port = busy.getsockname()[1]
        listen = f"127.0.0.1:{port if which == '--listen' else free_port()}"
        metrics = str(port if which == "--metrics-port" else 0)
        r = _server("--listen", listen, "--metrics-port", metrics, "--pool", pool)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and str(port) in errors[0] and which in errors[0], r.stderr
    assert _nodes(pool) == []


def _start_node(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([FARGPU, "server", "--backend", "sim", *args], env=_env(), cwd=tmp,
                            stdout=(tmp / "node.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip


def _wait_node(pool: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while not (nodes := _nodes(pool)):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return nodes[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_wildcard_listen_advertises_a_reachable_address(pool: str, tmp_path: Path) -> None:
    port = free_port()
    proc = _start_node(tmp_path, "--listen", f"0.0.0.0:{port}", "--metrics-port", "-1", "--pool", pool)
    try:
        node = _wait_node(pool, proc, tmp_path / "node.log")
        endpoints = node["endpoints"]
        assert isinstance(endpoints, list) and len(endpoints) == 1
        assert "0.0.0.0" not in endpoints[0] and endpoints[0].endswith(f":{port}"), endpoints
        assert endpoints[0].startswith("tls://"), endpoints  # beyond loopback: TLS by default (README, Security)
        host = endpoints[0].removeprefix("tls://").rpartition(":")[0]
        socket.create_connection((host, port), timeout=5).close()  # reachable where it says
        assert "advertising" in (tmp_path / "node.log").read_text()
    finally:
        _stop(proc)


def test_advertise_and_metrics_host(pool: str, tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    proc = _start_node(tmp_path, "--listen", f"0.0.0.0:{port}", "--advertise", f"gpu-7.example:{port}",
                       "--metrics-host", "0.0.0.0", "--metrics-port", str(mport), "--pool", pool)  # fmt: skip
    try:
        node = _wait_node(pool, proc, tmp_path / "node.log")
        assert node["endpoints"] == [f"tls://gpu-7.example:{port}"]
        log = (tmp_path / "node.log").read_text()
        assert f"Prometheus metrics on http://0.0.0.0:{mport}/metrics" in log
        # bound on every interface: the machine's non-loopback address answers too
        addrs = {"127.0.0.1"} | {a for a in re.findall(r"\d+\.\d+\.\d+\.\d+", subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True).stdout)}  # fmt: skip
        for a in addrs:
            assert "fargpu_node_sessions" in httpx.get(f"http://{a}:{mport}/metrics", timeout=5).text, a
    finally:
        _stop(proc)


def test_demo_says_how_to_get_fargpu_on_path(tmp_path: Path) -> None:
    r = subprocess.run([FARGPU, "demo", "--backend", "sim"], env=_env(), capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert f". {Path(sys.executable).parent / 'activate'}" in last or "is installed in" in last, last


def test_make_demo_as_the_readme_writes_it() -> None:
    """`make demo`, run in the checkout as the README says (after `make test` made .venv, as CI does): the pool
    manager, a local node (the simulated device on a machine without a GPU, labelled so) and the demo program through
    `fargpu run`, every element correct, ending with the line that puts fargpu on PATH."""
    repo = Path(__file__).resolve().parents[2]
    venv = repo / ".venv"
    if Path(sys.prefix) != venv or not (repo / "Makefile").is_file():
        pytest.skip("the tests run from another environment than the checkout's .venv, which `make demo` uses")
    if subprocess.run(["make", "-q", "venv"], cwd=repo, capture_output=True).returncode != 0:
        pytest.skip("the checkout's .venv is older than its sources: `make demo` would reinstall it first")
    env = {k: v for k, v in _env().items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}  # a user's shell, not
    r = subprocess.run(["make", "demo"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)  # make test's
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "vector add of" in out and "all correct" in out, out
    assert "== demo program exit code 0" in out, out
    assert "backend" in out and ("sim" in out or "cuda" in out), out  # the node says which device it runs on
    last = [ln for ln in r.stdout.strip().splitlines() if not ln.startswith("make")][-1]
    assert last.startswith("== ") and "fargpu" in last, out  # the line that puts fargpu on PATH


def test_fargpu_server_starts_without_the_pool_managers_imports() -> None:
    """A node started from zero waits for `fargpu server` to start: the console script's entry runs the node
    server's command without importing the pool manager's web stack, and still parses its options."""
    probe = (
        "import sys; from fargpu import entry; sys.argv = ['fargpu', 'server', '--help']\n"
        "try:\n    entry.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('LOADED', 'fastapi' in sys.modules, 'fargpu.pool_manager.server' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "--backend" in out.stdout and "LOADED False False" in out.stdout, out.stdout[-2000:]
    bad = subprocess.run([FARGPU, "server", "--no-such-flag"], env=_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--no-such-flag" in bad.stderr
    full = subprocess.run([FARGPU, "pool", "--help"], env=_env(), capture_output=True, text=True, timeout=60)
    assert full.returncode == 0 and "page-out" in full.stdout  # everything else: the full command tree


def test_a_pool_node_loads_none_of_the_pool_managers_service_nor_http_client() -> None:
    """A node of a plain-HTTP pool told its gRPC address (as the local provider tells the nodes it starts) needs
    neither the pool manager's service and models, nor httpx, nor prometheus_client without --metrics-port: what
    `fargpu server --pool` imports leaves them out (each is a tenth of a second or so of a node's start from zero).
    The local provider's fallback command, `python -m fargpu.entry`, runs the node server the same way."""
    probe = (
        "import sys; import fargpu.server.cli, fargpu.server.pool_link\n"
        "print('LOADED', *[m for m in ('fargpu.pool_manager.service', 'fargpu.pool_manager.models', 'httpx',"
        " 'prometheus_client', 'fastapi') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LOADED", out.stdout[-2000:]
    helped = subprocess.run([sys.executable, "-m", "fargpu.entry", "server", "--help"], env=_env(),
                            capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    assert helped.returncode == 0 and "fargpu server" in helped.stdout and "--pool-grpc" in helped.stdout
