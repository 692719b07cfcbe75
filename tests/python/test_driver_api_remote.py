"""The C driver-API test program (tests/c/driver_api_test.c) through fargpu: stub → protocol → node server
→ simulated device must print exactly what the program prints on the simulated device directly, and its
launches must reach the device with the same configuration and parameter bytes. (On the GPU host,
bench/gpu_run.sh makes the same comparison against the real driver.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import REPO, NodeServer

from fargpu import paths


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("nvcc") and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc is needed to build the test kernels")
    out = tmp_path_factory.mktemp("prog")
    subprocess.run(["bash", str(REPO / "tests/c/build_test_program.sh"), str(out)], check=True, capture_output=True)
    return out


def _run(program: Path, env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    env = dict(env, FARGPU_SIM_LAUNCH_LOG=str(log))
    cmd = [str(program / "driver_api_test"), str(program / "test_kernels.ptx"), str(program / "test_kernels.cubin")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _launches(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_remote_output_matches_direct(program: Path, tmp_path: Path, node_server: NodeServer) -> None:
    sim_dir = tmp_path / "simlib"
    sim_dir.mkdir()
    os.symlink(paths.sim_lib(), sim_dir / "libcuda.so.1")
    direct = _run(program, dict(os.environ, LD_LIBRARY_PATH=str(sim_dir)), tmp_path / "direct.jsonl")
    assert direct.returncode == 0, direct.stdout[-2000:]
    before = len(_launches(node_server.launch_log))
    remote = _run(program, node_server.client_env(), tmp_path / "unused.jsonl")
    assert remote.returncode == 0, remote.stdout[-2000:] + remote.stderr[-2000:]
    assert remote.stdout == direct.stdout
    # Launch records: same kernels, grids, blocks, shared memory and parameter bytes, in order (the
    # parameter bytes hold device addresses, which differ between runs, so only their count is compared).
    key = ("func", "grid", "block", "shmem", "result")
    want = [tuple(str(x.get(k)) for k in key) + (len(str(x["params"])),) for x in _launches(tmp_path / "direct.jsonl")]
    got = [tuple(str(x.get(k)) for k in key) + (len(str(x["params"])),)
           for x in _launches(node_server.launch_log)[before:]]
    assert want and got == want
