"""docker/ for real: builds every image with Debian's Docker (scripts/setup_docker.sh starts dockerd and makes the
default base image locally: no registry is reachable), brings up docker/compose.yaml's pool with the simulated
device (Redis, pool manager on the Redis store, one node server), waits for every healthcheck, runs the demo client
container and checks what it printed, then asks the pool from the host what it saw. An application image made
`FROM` the client base with nothing but an nvcc-built CUDA program in it (the real CUDA runtime linked statically)
runs that program through `fargpu run` against the same pool.

Builds reuse Docker's layer cache (the three Dockerfiles share one build stage), so only the first run on a machine
pays for pip and CMake inside the build (a few minutes on 2 cores). Redis comes from a local stand-in image under
the tag compose names (tests/docker/redis-standin.Dockerfile). Docker must work here: this test fails, never skips,
when it does not."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
IMAGES = {"pool-manager": "fargpu/pool-manager:0.1.0", "node": "fargpu/node:0.1.0", "client": "fargpu/client:0.1.0"}


def sh(*cmd: str, timeout: float = 600, env: dict[str, str] | None = None, check: bool = True) -> str:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_stage(text: str) -> str:
    """The shared `build` stage of a Dockerfile: from its comment line to the runtime stage's comment."""
    start = text.index("# ---- build:")
    return text[start:text.index("# ---- runtime:")]


def test_dockerfiles_share_one_build_stage_and_name_public_bases() -> None:
    texts = {name: (DOCKER_DIR / f"{name}.Dockerfile").read_text() for name in IMAGES}
    stages = {build_stage(t) for t in texts.values()}
    assert len(stages) == 1, "the build stage differs between the Dockerfiles: the layer cache would not be shared"
    for name, t in texts.items():
        assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", t, re.M), name
        assert t.count("FROM ${BASE_IMAGE}") == 2, f"{name}: one build and one runtime stage, both from BASE_IMAGE"
        assert re.search(r"^USER fargpu$", t, re.M), f"{name} must run as the non-root user"


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    sh("bash", "scripts/setup_docker.sh", timeout=900)
    t0 = time.monotonic()
    sh(DOCKER, "build", "-q", "-f", "tests/docker/redis-standin.Dockerfile", "-t", "redis:7.0-bookworm", "tests/docker")
    for name, tag in IMAGES.items():
        sh(DOCKER, "build", "-f", f"docker/{name}.Dockerfile", "-t", tag, ".", timeout=1200)
    print(f"images built in {time.monotonic() - t0:.0f} s")
    # Earlier builds' images lose their tags to these ones: drop those older than an hour, so repeated runs on a
    # machine do not fill its disk (the current images' layers stay, and with them the build cache; a build running
    # beside this one keeps its fresh intermediate images).
    sh(DOCKER, "image", "prune", "-f", "--filter", "until=1h")
    return IMAGES


def test_images_run_as_non_root_with_healthchecks(images: dict[str, str]) -> None:
    for name, tag in images.items():
        cfg = json.loads(sh(DOCKER, "image", "inspect", tag))[0]["Config"]
        assert cfg["User"] == "fargpu", name
        if name == "client":  # a base for batch programs: derived images would inherit a healthcheck
            assert not cfg.get("Healthcheck"), name
        else:
            assert cfg["Healthcheck"]["Test"][-2:] == ["/opt/fargpu/healthcheck.py", name], name
    out = sh(DOCKER, "run", "--rm", "--entrypoint", "sh", images["client"], "-c",
             "id -u; python3 -c 'import fargpu.paths as p; print(p.stub_lib())'; command -v fargpu gcc cmake || true")
    uid, stub, *tools = out.split()
    assert uid == "10001" and stub.endswith("/stub/libcuda.so.1"), out
    assert tools == ["/opt/fargpu/bin/fargpu"], f"build tools leaked into the runtime image: {tools}"
    # The node image asks the NVIDIA container toolkit for the driver's compute libraries and holds none itself.
    env = json.loads(sh(DOCKER, "image", "inspect", images["node"]))[0]["Config"]["Env"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env and "NVIDIA_VISIBLE_DEVICES=all" in env
    found = sh(DOCKER, "run", "--rm", "--entrypoint", "sh", images["node"], "-c",
               "find / -xdev -name 'libcuda.so*' -not -path '*/fargpu/*' 2>/dev/null; true")
    assert found.strip() == "", f"the node image carries a driver library: {found}"


@pytest.fixture(scope="module")
def compose_pool(images: dict[str, str]) -> Iterator[tuple[list[str], dict[str, str], int]]:
    project = f"fgtest{os.getpid()}"
    rest, metrics = free_port(), free_port()
    env = {**os.environ, "FARGPU_ENROL_TOKEN": secrets.token_hex(16), "FARGPU_ADMIN_TOKEN": secrets.token_hex(16),
           "FARGPU_API_KEY": "fgk_" + secrets.token_hex(32),
           "FARGPU_POOL_PORT": str(rest), "FARGPU_NODE_METRICS_PORT": str(metrics), "DOCKER_BUILDKIT": "0"}
    base = ["docker-compose", "-f", "docker/compose.yaml", "-p", project, "--profile", "sim"]
    try:
        sh(*base, "up", "-d", "--no-build", "redis", "pool-manager", "node-sim", env=env, timeout=300)
        yield base, env, rest
    finally:
        logs = sh(*base, "logs", "--no-color", env=env, check=False, timeout=60)
        print(logs[-6000:])
        sh(*base, "down", "-v", "--remove-orphans", env=env, check=False, timeout=120)


def wait_healthy(base: list[str], env: dict[str, str], services: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for svc in services:
            cid = sh(*base, "ps", "-q", svc, env=env).strip()
            states[svc] = sh(DOCKER, "inspect", "-f", "{{.State.Health.Status}}", cid).strip() if cid else "absent"
        if all(s == "healthy" for s in states.values()):
            return
        time.sleep(1)
    raise AssertionError(f"not healthy within {timeout:.0f} s: {states}")


def test_compose_pool_runs_the_demo_client(compose_pool: tuple[list[str], dict[str, str], int]) -> None:
    base, env, rest = compose_pool
    wait_healthy(base, env, ["redis", "pool-manager", "node-sim"])
    out = sh(*base, "run", "--rm", "client", env=env, timeout=300)
    assert re.search(r"lease lease-\w+: 1 GPU x 64\.0 MiB on node node-sim-1 \(node:7100\)", out), out
    assert "device 0: fargpu simulated device" in out, out
    assert "vector add of 1048576 floats: all correct" in out, out

    # The pool, from the host through the published port: the node registered over gRPC, the lease was released.
    def get(path: str) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{rest}{path}",
                                     headers={"Authorization": f"Bearer {env['FARGPU_API_KEY']}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    nodes = get("/v1/nodes")
    assert isinstance(nodes, list) and [n["node_id"] for n in nodes] == ["node-sim-1"], nodes
    info = get("/v1/info")
    assert isinstance(info, dict) and info["store"] == "redis", info
    with urllib.request.urlopen(f"http://127.0.0.1:{rest}/docs", timeout=10) as r:
        assert b"swagger" in r.read().lower()

    # The healthcheck can fail: the node check inside the pool manager's container finds no node port there.
    cid = sh(*base, "ps", "-q", "pool-manager", env=env).strip()
    r = subprocess.run([DOCKER, "exec", cid, "/opt/fargpu/bin/python", "/opt/fargpu/healthcheck.py", "node"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unhealthy: node" in r.stderr, (r.returncode, r.stderr)


def test_an_application_image_from_the_client_base_runs_a_cuda_program(
        compose_pool: tuple[list[str], dict[str, str], int], tmp_path: Path) -> None:
    """`FROM fargpu/client` plus a CUDA program and `fargpu run` is all an application image needs: the acceptance
    suite's sim_probe (static cudart; the simulated device runs no user kernel, so its two launches are reported as
    not supported, which the probe tolerates) runs in its own container on the compose network."""
    base, env, _ = compose_pool
    wait_healthy(base, env, ["pool-manager", "node-sim"])
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        pytest.skip("nvcc is needed to build the CUDA program (CUDA 13.0 toolkit)")
    src = ROOT / "tests" / "acceptance" / "cuda" / "sim_probe.cu"
    gencode = ["-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_90,code=compute_90"]
    sh(nvcc, "-O2", "-std=c++17", "-no-compress", *gencode, "-cudart", "static", f"-I{src.parent}",
       "-o", str(tmp_path / "sim_probe"), str(src))
    (tmp_path / "Dockerfile").write_text(
        f"FROM {IMAGES['client']}\n"
        "COPY sim_probe /opt/app/sim_probe\n"
        'CMD ["fargpu", "run", "--vram", "64M", "--wait", "60", "--", "/opt/app/sim_probe"]\n')
    tag = f"fargpu-test-app:{os.getpid()}"
    sh(DOCKER, "build", "-q", "-t", tag, str(tmp_path))
    try:
        network = f"{base[base.index('-p') + 1]}_default"
        r = subprocess.run([DOCKER, "run", "--rm", "--network", network, "-e", "FARGPU_POOL_URL=http://pool-manager:7000",
                            "-e", f"FARGPU_API_KEY={env['FARGPU_API_KEY']}", tag],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        sh(DOCKER, "rmi", tag, check=False)
    out = r.stdout.splitlines()
    why = f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0 and out and out[-1] == "PASS", why
    assert "name fargpu simulated device" in out, why
    checks = [ln for ln in out if re.match(r"^\S.*\s(ok|MISMATCH)$", ln)]
    assert len(checks) == 9 and all(ln.endswith(" ok") for ln in checks), why
    assert "lease lease-" in r.stderr + r.stdout, why
