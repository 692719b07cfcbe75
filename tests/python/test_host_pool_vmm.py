"""The node's host page pool as driver memory (server/host_pool_vmm.py, server/replay/hostpool.c): made in the
background by a process of its own; where the driver cannot make it the pool is a memfd and the reason is logged;
sessions that start before a driver pool is ready page out to disk; a driver pool, which the agent cannot read, never
receives a restored session's memory. The simulated device makes host-NUMA memory as the driver does (node 0
only), so the pool's bookkeeping and the worker's mapping run here (tests/python/test_paging.py pages through it);
the DMA's speed needs the real driver: bench/paging_gpu.sh measures it (its JSON names the pool's kind)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest
from test_pager_pool_ready import _charge, _page_out_command

from fargpu.server import host_pool_vmm
from fargpu.server.backend import select
from fargpu.server.pager import HostPool, Pager

MiB = 1 << 20


def test_the_simulated_driver_makes_one_and_refuses_a_numa_node_it_lacks_with_the_reason() -> None:
    fds, n = host_pool_vmm.make(str(select("sim").driver), 63 * MiB, timeout_s=60)
    try:
        assert n == 62 * MiB and len(fds) == 1  # one slab, no larger than the pool, on the 2 MiB granularity
        assert os.readlink(f"/proc/self/fd/{fds[0]}").startswith("/memfd:fargpu-sim-host-0")
        assert os.fstat(fds[0]).st_size == n
    finally:
        for fd in fds:
            os.close(fd)
    with pytest.raises(host_pool_vmm.HostPoolError) as e:
        host_pool_vmm.make(str(select("sim").driver), 64 * MiB, numa=1, timeout_s=60)
    assert "host-NUMA" in str(e.value) and "CUDA error" in str(e.value), str(e.value)


def test_a_pool_the_driver_cannot_make_becomes_a_memfd_with_the_reason_logged(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(size: int) -> tuple[list[int], int]:
        raise host_pool_vmm.HostPoolError(f"no host-NUMA memory for {size} bytes here")

    caplog.set_level(logging.WARNING, "fargpu.server.pager")
    pool = HostPool(64 * MiB, prefault=False, maker=refuse)
    try:
        assert pool.ready.wait(10)
        assert pool.kind == "memfd" and pool.cpu_view and pool.fd >= 0
        assert os.fstat(pool.fd).st_size == 64 * MiB
        assert any("no host-NUMA memory for 67108864 bytes here" in r.getMessage() for r in caplog.records)
    finally:
        pool.close()


async def test_sessions_before_a_driver_pool_is_ready_page_to_disk(tmp_path: Path) -> None:
    gate = threading.Event()
    stand_in = os.memfd_create("stand-in-for-a-driver-descriptor", os.MFD_CLOEXEC)

    def slow(size: int) -> tuple[list[int], int]:
        gate.wait(30)
        return [stand_in], size

    p = Pager(1 << 30, 64 << 20, tmp_path / "spill", pool_maker=slow)
    try:
        assert p.pool.kind == "vmm" and not p.pool.cpu_view and not p.pool.usable and not p.pool.ready.is_set()
        p.admit("early", "standard", None)
        p.states["early"].has_pool = False  # what the agent records for a worker started without a pool
        _charge(p, "early", MiB)
        cmd, res = await _page_out_command(p, "early", "host")
        assert cmd == "" and "started before the node's host page pool was ready" in res, res
        cmd, res = await _page_out_command(p, "early", "auto")
        assert cmd.startswith("pageout disk "), cmd
        gate.set()
        assert await asyncio.to_thread(p.pool.ready.wait, 10)
        assert p.pool.fds == [stand_in] and p.pool.fd == -1 and p.pool.slab == 64 << 20
        p.admit("later", "standard", None)
        _charge(p, "later", MiB)
        cmd, res = await _page_out_command(p, "later", "auto")
        assert cmd.startswith("pageout host "), cmd
    finally:
        gate.set()
        p.close()


async def test_an_agent_takes_a_driver_pool_when_asked_and_a_memfd_by_default_on_the_simulated_device(
        tmp_path: Path) -> None:
    from fargpu.server.auth import StaticTokenAuth
    from fargpu.server.node_agent import AgentConfig, NodeAgent

    for kind, want in (("vmm", "vmm"), ("auto", "memfd")):
        agent = NodeAgent(select("sim"), StaticTokenAuth("pool-kind-token"),
                          AgentConfig(listen="127.0.0.1:0", host_pool_bytes=64 * MiB,
                                      spill_dir=str(tmp_path / "spill"), host_pool_kind=kind))
        try:
            assert await asyncio.to_thread(agent.pager.pool.ready.wait, 60)
            assert agent.pager.pool.kind == want and agent.pager.pool.usable, (kind, agent.pager.pool.kind)
            assert (agent.pager.pool.fd >= 0) == (want == "memfd") and bool(agent.pager.pool.fds) == (want == "vmm")
            assert agent.pager.pool.cpu_view == (want == "memfd")
        finally:
            agent.pager.close()
    with pytest.raises(ValueError, match="use auto, vmm or memfd"):
        NodeAgent(select("sim"), StaticTokenAuth("t"), AgentConfig(host_pool_kind="fast"))


def test_a_hard_descriptor_limit_too_low_for_the_slabs_is_raised_to_and_said(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Each worker is handed every slab: with 512 slabs the agent raises its soft limit, and a hard limit below what
    it wants is used as far as it goes and named in a warning that says what to do."""
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(host_pool_vmm.resource, "getrlimit", lambda _what: (1024, 1500))
    monkeypatch.setattr(host_pool_vmm.resource, "setrlimit", lambda _what, lim: set_to.append(lim))
    with caplog.at_level(logging.WARNING, logger="fargpu.server.pager"):
        host_pool_vmm._raise_fd_limit(512)
    assert set_to == [(1500, 1500)]
    assert "hard 1500" in caplog.text and "--host-pool-slab-mb" in caplog.text
    caplog.clear()
    set_to.clear()
    monkeypatch.setattr(host_pool_vmm.resource, "getrlimit", lambda _what: (1024, 1 << 20))
    with caplog.at_level(logging.WARNING, logger="fargpu.server.pager"):
        host_pool_vmm._raise_fd_limit(512)
    assert set_to == [(4 * 512 + 1024, 1 << 20)] and not caplog.text  # room enough: raised, nothing said
