"""The local provider against a real pool manager: it starts real `fargpu server --backend sim` processes that
enrol and register by themselves under the node id it gave them (the lowest free `local-N`), lists them with
their pids, stops one with SIGTERM (its process is gone, the id is free again), and stops every node it started
when it closes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import eventually, fast, free_port, key_headers, pm_config, subprocess_env
from typer.testing import CliRunner

from fargpu.cli import app
from fargpu.pool_manager.providers import ProviderState, local
from fargpu.pool_manager.providers.local import LocalProvider
from fargpu.pool_manager.server import PoolManager


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_the_fallback_node_command_ignores_a_fargpu_folder_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a `fargpu` script beside Python or on PATH (the GPU host's benchmark runs so), nodes start as
    `python -P -m fargpu.entry server ...`: the installed package, not a `fargpu/` folder of the working directory
    (a source checkout's is not the package, and the node died at import), and without the pool manager's imports."""
    real_python = sys.executable
    monkeypatch.setattr(local.shutil, "which", lambda name: None)
    monkeypatch.setattr(local.sys, "executable", str(tmp_path / "bin" / "python3"))  # no fargpu script beside it
    argv = local.fargpu_command()
    assert argv == [str(tmp_path / "bin" / "python3"), "-P", "-m", "fargpu.entry"]
    decoy = tmp_path / "checkout"
    (decoy / "fargpu").mkdir(parents=True)
    (decoy / "fargpu" / "__init__.py").write_text("raise ImportError('the decoy fargpu/ folder was imported')\n")
    out = subprocess.run([real_python, *argv[1:], "server", "--help"], cwd=decoy, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--pool-grpc" in out.stdout, out.stderr[-2000:]


async def test_local_provider_starts_lists_and_stops_node_servers(tmp_path: Path) -> None:
    async with PoolManager(pm_config(**fast(), enrol_token="enrol-local")) as pm, httpx.AsyncClient(
        base_url=pm.rest_url, headers=key_headers()
    ) as api:
        provider = LocalProvider(pm.rest_url, enrol_token="enrol-local", backend="sim", log_dir=tmp_path / "logs",
                                 extra_args=["--ctx-charge", "0"])  # fmt: skip
        try:
            first = await provider.start()
            second = await provider.start()
            assert (first.node_id, second.node_id) == ("local-0", "local-1")
            assert first.state == ProviderState.starting

            async def registered() -> bool:
                ids = {n["node_id"] for n in (await api.get("/v1/nodes")).json() if n["state"] == "up"}
                return ids == {"local-0", "local-1"}

            await eventually(registered, 60)
            listed = await provider.list()
            assert [(n.node_id, n.state) for n in listed] == [("local-0", ProviderState.running),
                                                              ("local-1", ProviderState.running)]  # fmt: skip
            pids = {n.node_id: int(n.detail.split()[1]) for n in listed}
            assert all(alive(p) for p in pids.values())
            node = (await api.get("/v1/nodes/local-0")).json()
            assert node["backend"] == "sim" and node["endpoints"][0].startswith("tcp://127.0.0.1:")
            lease = await api.post("/v1/leases", json={"vram": "64M"})
            assert lease.status_code == 201, lease.text
            await provider.stop("local-0")
            assert not alive(pids["local-0"])
            assert [n.node_id for n in await provider.list()] == ["local-1"]
            assert (tmp_path / "logs" / "local-0.log").read_text()  # its output went to its log
            assert (await provider.start()).node_id == "local-0"  # the lowest free id again
            await provider.stop("no-such-node")  # nothing to do
        finally:
            await provider.close()
        assert await provider.list() == []
        assert not alive(pids["local-1"])


def test_fargpu_run_at_zero_nodes_through_the_real_commands(tmp_path: Path) -> None:
    """`fargpu pool-manager --provider local` (the real command) with no node at all; `fargpu run -- python -m
    fargpu.demo_program` (a CUDA program through the stub) waits while the pool starts a node, runs on it
    correctly, and once the lease is gone the node is stopped again. `fargpu pool nodes` shows the node with its
    provider state meanwhile."""
    rest, grpc_port = free_port(), free_port()
    script = Path(sys.executable).with_name("fargpu")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "fargpu.cli"]
    env = subprocess_env() | {"FARGPU_ENROL_TOKEN": "enrol-cli"}
    env.pop("LD_PRELOAD", None)
    log = (tmp_path / "pool.log").open("wb")
    proc = subprocess.Popen(
        [*argv, "pool-manager", "--port", str(rest), "--grpc-port", str(grpc_port), "--memory-only",
         "--heartbeat-interval", "0.2", "--provider", "local", "--local-backend", "sim", "--local-node-args",
         "--ctx-charge 0", "--min-nodes", "0", "--max-nodes", "1", "--node-idle-s", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{rest}"
    runner = CliRunner(env={"COLUMNS": "250"})

    def nodes() -> list[dict[str, object]] | None:
        try:
            got: list[dict[str, object]] = httpx.get(url + "/v1/nodes", timeout=5, headers=key_headers()).json()
            return got
        except (httpx.HTTPError, AssertionError):  # not up yet (no local key written yet either)
            return None

    def wait(what: str, ok: object, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while not ok():  # type: ignore[operator]
            assert proc.poll() is None, (tmp_path / "pool.log").read_text()
            assert time.monotonic() < deadline, f"{what}:\n" + (tmp_path / "pool.log").read_text()[-3000:]
            time.sleep(0.1)

    try:
        wait("the pool manager", lambda: nodes() == [])
        t0 = time.perf_counter()
        run = subprocess.Popen([*argv, "run", "--pool", url, "--vram", "64M", "--", sys.executable, "-m",
                                "fargpu.demo_program"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait("a node", lambda: [n["state"] for n in nodes() or []] == ["up"])
        r = runner.invoke(app, ["pool", "nodes", "--pool", url, "--json"])
        assert [(n["node_id"], n["provider_state"]) for n in json.loads(r.output)] == [("local-0", "running")]
        r = runner.invoke(app, ["pool", "nodes", "--pool", url])
        assert r.exit_code == 0 and "local-0" in r.output and "running" in r.output, r.output
        out, err = run.communicate(timeout=120)
        print(f"fargpu run from zero nodes to the program's end: {time.perf_counter() - t0:.2f} s")
        assert run.returncode == 0 and "all correct" in out, out + err
        assert "on node local-0" in err
        wait("back to zero nodes", lambda: nodes() == [], 30)
        bad = subprocess.run([*argv, "pool-manager", "--provider", "nomad"], env=env, capture_output=True, text=True)
        assert bad.returncode != 0 and "expected one of none, local, kubernetes" in bad.stderr
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    text = (tmp_path / "pool.log").read_text()
    assert "started local node local-0" in text and "stopped local node local-0" in text
