"""The node agent reads NVML off its event loop: a real NodeAgent on a (pretend) real-GPU backend, with a stand-in
for the NVML read (fargpu.server.devices._nvml_devices) that returns only once the event loop has answered it, registers
and heartbeats through a real PoolLink to a real pool manager, and refreshes its metrics. A read made on the loop
thread could never be answered (the loop would be blocked in it): it would wait out its timeout and the test fails.
Also checked: every read runs on one thread (NVML calls stay serialised) and the pool sees exactly what NVML said."""

from __future__ import annotations

import asyncio
import queue
import threading
from pathlib import Path

import httpx
import pytest
from conftest import eventually, fast, key_headers, pm_config

from fargpu.pool_manager.server import PoolManager
from fargpu.server import devices
from fargpu.server.agent_api import DeviceInfo
from fargpu.server.auth import StaticTokenAuth
from fargpu.server.backend import Backend
from fargpu.server.metrics import NodeMetrics
from fargpu.server.node_agent import AgentConfig, NodeAgent
from fargpu.server.pool_link import PoolLink

GiB = 1 << 30
GPUS = [
    DeviceInfo(0, "NVIDIA H100 80GB HBM3", "GPU-00000000-1111-2222-3333-444444444444", 80 * GiB, 71 * GiB, 12.0),
    DeviceInfo(1, "NVIDIA H100 80GB HBM3", "GPU-55555555-6666-7777-8888-999999999999", 80 * GiB, 80 * GiB, 0.0),
]


class GatedNvml:
    """Stands in for the NVML read. While gated, each read records its thread, asks the event loop for an answer
    (a queue the loop drains) and waits for it, as a slow NVML call would keep a thread busy."""

    def __init__(self) -> None:
        self.gated = False
        self.threads: list[int] = []  # of the gated reads
        self.answered: list[bool] = []  # per gated read: whether the loop answered it while it waited
        self.asks: queue.SimpleQueue[threading.Event] = queue.SimpleQueue()

    def __call__(self) -> list[DeviceInfo]:
        if self.gated:
            self.threads.append(threading.get_ident())
            ask = threading.Event()
            self.asks.put(ask)
            self.answered.append(ask.wait(3.0))
        return list(GPUS)

    async def answer(self) -> None:
        """On the event loop: answers every read that asks."""
        while True:
            try:
                self.asks.get_nowait().set()
            except queue.Empty:
                await asyncio.sleep(0.005)


async def test_nvml_is_read_off_the_event_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nvml = GatedNvml()
    monkeypatch.setattr(devices, "_nvml_devices", nvml)
    backend = Backend("cuda", Path("/nonexistent/libcuda.so.1"), len(GPUS))
    agent = NodeAgent(backend, StaticTokenAuth("t"), AgentConfig(
        listen=None, host_pool_kind="memfd", host_pool_prefault=False, host_pool_bytes=16 << 20,
        spill_dir=str(tmp_path / "spill"), park_store="off"))  # fmt: skip
    agent.endpoint = "127.0.0.1:7100"
    loop_thread = threading.get_ident()
    nvml.gated = True
    answerer = asyncio.create_task(nvml.answer())
    try:
        async with PoolManager(pm_config(**fast())) as pm, httpx.AsyncClient(
            base_url=pm.rest_url, headers=key_headers()
        ) as api:
            link = PoolLink(agent, pm.rest_url, node_id="node-nvml", retry_s=0.05, enrol_token=pm.enrol_token)
            await link.start()
            try:
                assert link.registered.is_set()
                await eventually(lambda: link.last_heartbeat_ok is not None and len(nvml.threads) >= 3)
                node = (await api.get("/v1/nodes/node-nvml")).json()
            finally:
                await link.stop()
        metrics = NodeMetrics(agent)
        await metrics.refresh_async()
        free = next(m for m in metrics.collect() if m.name == "fargpu_node_gpu_vram_free_bytes")
        assert [s.value for s in free.samples] == [g.free_bytes for g in GPUS]
    finally:
        answerer.cancel()
        await agent.stop()
    assert nvml.threads and all(nvml.answered), f"an NVML read waited for the event loop: {nvml.answered}"
    assert loop_thread not in nvml.threads, "NVML was read on the event loop thread"
    assert len(set(nvml.threads)) == 1, "NVML reads ran on more than one thread"
    want = [{"index": g.index, "name": g.name, "uuid": g.uuid, "total_bytes": g.total_bytes,
             "free_bytes": g.free_bytes, "utilization_pct": g.utilization_pct} for g in GPUS]  # fmt: skip
    assert [{k: g[k] for k in want[0]} for g in node["gpus"]] == want


async def test_read_devices_matches_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The off-loop read gives what the blocking one gives: on a GPU (NVML) and on the simulated device."""
    monkeypatch.setattr(devices, "_nvml_devices", lambda: list(GPUS))
    gpu = Backend("cuda", Path("/nonexistent/libcuda.so.1"), len(GPUS))
    assert await devices.devices_off_loop(gpu, 5 * GiB) == devices.devices(gpu, 5 * GiB) == GPUS
    sim = Backend("sim", Path("/nonexistent/libfargpu_sim.so"), 2)
    assert await devices.devices_off_loop(sim, 3 * GiB) == devices.devices(sim, 3 * GiB)
    assert [d.free_bytes for d in devices.devices(sim, 3 * GiB)] == [devices.sim_memory(i) - 3 * GiB for i in (0, 1)]
