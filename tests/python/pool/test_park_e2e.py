"""Scale to zero with a live session, end to end on the simulated device: a client leases from a pool with no
node (the local provider starts one), runs, goes idle; the pool pages its session out and parks it, the idle node
is stopped (its process gone) and the pool is at zero nodes; the client's next call asks the pool where its lease
lives now, the pool starts a node, the session is restored there and the program finishes with what an
uninterrupted run prints (the kernel's output is computed here, not recorded)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import eventually, fast, key_headers, pm_config

from fargpu import paths
from fargpu.pool_manager.server import PoolManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_park import PROGRAM  # noqa: E402  (the tests folder's own module)


async def test_parked_session_survives_zero_nodes_and_resumes_on_a_new_node(tmp_path: Path) -> None:
    store = tmp_path / "park-store"
    cfg = pm_config(**fast(heartbeat_timeout_s=3.0), provider="local", local_backend="sim",
                    local_node_args=["--ctx-charge", "0", "--park-store", str(store)], local_log_dir=tmp_path / "nodes",
                    enrol_token="enrol-park", min_nodes=0, max_nodes=1, node_idle_s=1.0, scale_interval_s=0.1,
                    scale_down_cooldown_s=0.0, park_idle_s=1.0)
    async with PoolManager(cfg) as pm, httpx.AsyncClient(
        base_url=pm.rest_url, timeout=60, headers=key_headers()
    ) as api:
        env = {k: v for k, v in os.environ.items() if k not in ("FARGPU_SERVER", "FARGPU_TOKEN", "LD_PRELOAD")}
        env.update(LD_LIBRARY_PATH=f"{paths.stub_dir()}:{env.get('LD_LIBRARY_PATH', '')}", FARGPU_POOL_URL=pm.rest_url,
                   FARGPU_VRAM="256M", FARGPU_LOG="info", FARGPU_RESUME_TIMEOUT_S="120")
        err_log = tmp_path / "client.err"
        p = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-P", "-c", PROGRAM], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err_log.open("w"), text=True, cwd="/")
        try:
            assert p.stdout is not None and p.stdin is not None
            ready = await asyncio.to_thread(p.stdout.readline)
            assert ready.startswith("READY"), ready + err_log.read_text()

            async def parked_at_zero_nodes() -> bool:
                nodes = [n for n in (await api.get("/v1/nodes")).json() if n["state"] != "down"]
                scaling = (await api.get("/v1/scaling")).json()
                return not nodes and not scaling["nodes"] and any(store.glob("sessions/*/session.json"))

            await eventually(parked_at_zero_nodes, 90)  # paged, parked, node stopped: zero nodes
            out, _ = await asyncio.to_thread(p.communicate, "go\n", 180)
        finally:
            if p.poll() is None:
                p.kill()
        err = err_log.read_text()
        expected = hashlib.sha256(struct.pack("<I", 0xC0FFEE) * ((1 << 20) // 4)).hexdigest()
        assert out.strip() == f"RESULT bad= prio -1 flags 1 ctx True {expected}", out + "\n" + err
        assert "resumed on" in err and "could open only" not in err, err  # its data connections attach again
        assert not any(store.glob("sessions/*/session.json"))  # restored once: the parked state is gone
