"""Paging on the simulated device: an idle session's memory leaves the GPU (to the node's host page pool, or to a
spill file) and comes back at the same addresses with every byte, the moment the session calls again; a node
whose sessions together book more than its VRAM lets them take turns; a worker killed mid-step leaks nothing.

The simulated device keeps "device" memory in host memfds and implements the VMM calls faithfully, so these tests
prove the engine's bookkeeping and the agent's policy, never anything about GPU speed (bench/ does that)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE, TAKE_TURNS
from e2e_helpers import NodeServer, start_server, stop_server

MiB = 1 << 20

# cudart- and cuBLAS-shaped: many small allocations and a few large ones, each filled with its own pattern.
# The client fills, says FILLED, waits for a line, then reads everything back and checks bytes and addresses.
SHAPES = PRELUDE + r'''
import hashlib
sizes = [4096 * (i % 7 + 1) + 512 * i for i in range(40)] + [3 << 20, 32 << 20, 48 << 20]
ctx0()
bufs = []
for i, n in enumerate(sizes):
    r, p = alloc(n); ok(r, "alloc")
    data = hashlib.sha256(str(i).encode()).digest() * (n // 32 + 1)
    data = data[:n]
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), data, ctypes.c_size_t(n)), "htod")
    bufs.append((p, n, data))
print("FILLED", flush=True)
sys.stdin.readline()
bad = 0
for p, n, data in bufs:
    out = ctypes.create_string_buffer(n)
    ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh")
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    ok(cu.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(p)), "range")
    if out.raw != data or base.value != p or size.value < n:
        bad += 1
print("SAME" if bad == 0 else f"DIFFERENT {bad}", flush=True)
'''


def _wait_log(s: NodeServer, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.compile(pattern).search(s.log_text(), after)
        if m:
            return m
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the node log:\n{s.log_text()[-3000:]}")


def _wait_no_files(d: Path, what: str = "spill files left", timeout: float = 30.0) -> None:
    """The agent deletes spill files on a thread of its own (server/pager.py): none is left within `timeout`."""
    deadline = time.monotonic() + timeout
    while list(d.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(d.iterdir()) == [], f"{what}: {list(d.iterdir())}"


def _start_shapes(env: dict[str, str]) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-P", "-c", SHAPES], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line == "FILLED", line + (p.stderr.read() if p.stderr else "")
    return p


@pytest.mark.parametrize("route", ["bounce", "direct", "vmm", "vmm-slabs"])
def test_idle_session_pages_to_host_and_back_with_every_byte(tmp_path: Path, route: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # a memfd pool: through bounce buffers, or DMA into the extent; or the driver-memory pool (host-NUMA VMM
    # memory in slabs, the default on a GPU), which the simulated device makes as the driver does and, as an H100
    # does, maps only whole: in one slab of 256 MiB, or (vmm-slabs) an extent of many 16 MiB slabs
    if not route.startswith("vmm"):
        monkeypatch.setenv("FARGPU_PAGING_DMA", route)
    kind = ["--host-pool-kind", "vmm"] if route.startswith("vmm") else []
    env = {"FARGPU_HOST_POOL_SLAB_MB": "16"} if route == "vmm-slabs" else {}
    s = start_server(tmp_path, "--idle-page-out", "1", "--host-page-pool", "256M", *kind, env_extra=env)
    try:
        if route.startswith("vmm"):
            slabs = "16 slabs of 16 MiB" if route == "vmm-slabs" else "1 slabs of 256 MiB"
            _wait_log(s, rf"host page pool: 256 MiB of pinned host memory from the driver \({slabs}\)")
        client = _start_shapes(s.client_env())
        m = _wait_log(s, r"page-out of session (\w+): paged host (\d+)")
        assert int(m.group(2)) >= 83 * MiB
        if route.startswith("vmm"):  # between steps the worker maps none of the pool (the deep level needs that)
            pid = re.search(rf"session {m.group(1)} .*-> worker (\d+)", s.log_text())
            assert pid is not None
            maps = Path(f"/proc/{pid.group(1)}/maps").read_text()
            assert "fargpu-sim-host" not in maps, [ln for ln in maps.splitlines() if "fargpu-sim-host" in ln]
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
        _wait_log(s, r"paged host")  # the log names the step; the page-in came with the first call
        assert "resident" not in err
    finally:
        stop_server(s)


def test_a_host_pool_the_driver_cannot_map_gives_way_to_disk(tmp_path: Path) -> None:
    # A driver that refuses to map the pool's host-NUMA memory (as an H100 refused a part of one with 801): the
    # page-out to the pool fails, and the session pages to disk instead of staying resident for ever.
    spill = tmp_path / "spill"
    s = start_server(tmp_path, "--idle-page-out", "1", "--host-page-pool", "256M", "--host-pool-kind", "vmm",
                     "--spill-dir", str(spill), env_extra={"FARGPU_SIM_HOST_NUMA_MAP": "refuse"})
    try:
        _wait_log(s, r"host page pool: 256 MiB of pinned host memory from the driver")  # before the session starts
        client = _start_shapes(s.client_env())
        m = _wait_log(s, r"session (\w+): the host page pool failed \(cannot map the node's host page pool "
                         r"\(CUDA error 801\)\); paging it to disk instead")
        _wait_log(s, rf"page-out of session {m.group(1)}: paged disk (\d+)")
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
        _wait_no_files(spill)
    finally:
        stop_server(s)


def test_page_out_spills_to_disk_when_the_host_pool_is_full(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    s = start_server(tmp_path, "--idle-page-out", "1", "--host-page-pool", "0", "--spill-dir", str(spill))
    try:
        client = _start_shapes(s.client_env())
        m = _wait_log(s, r"page-out of session (\w+): paged disk (\d+)")
        files = list(spill.iterdir())
        assert [f.name for f in files] == [f"{m.group(1)}.pages"] and files[0].stat().st_size >= int(m.group(2))
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
        _wait_no_files(spill)  # paged in: the agent deletes the file (on a thread of its own)
    finally:
        stop_server(s)




def test_three_half_gib_sessions_take_turns_on_one_gib(tmp_path: Path) -> None:
    os.environ["FARGPU_SIM_MEM_BYTES"] = str(1 << 30)
    try:
        s = start_server(tmp_path, "--host-page-pool", "2G")
    finally:
        del os.environ["FARGPU_SIM_MEM_BYTES"]
    procs: list[subprocess.Popen[str]] = []
    try:
        env = s.client_env()
        for _ in range(3):
            procs.append(subprocess.Popen([sys.executable, "-P", "-c", TAKE_TURNS], env=env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"))
        for rnd in range(1, 4):
            for p in procs:
                assert p.stdin is not None and p.stdout is not None
                try:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
                line = p.stdout.readline().strip()
                assert line == f"DONE {rnd}", line + (p.stderr.read() if p.stderr else "") + s.log_text()[-3000:]
        assert len(re.findall(r"made room for session", s.log_text())) >= 3
    finally:
        for p in procs:
            p.communicate("", timeout=30)
        stop_server(s)


@pytest.mark.parametrize("where", ["disk", "memfd", "vmm", "vmm-slabs"])
def test_worker_killed_during_page_out_or_page_in_leaks_nothing(tmp_path: Path, where: str) -> None:
    # Each copied allocation takes 20 ms more (a fault-injection knob of the engine), so a kill lands mid-step. To
    # disk (no host pool), or to a host pool of either kind that holds one such session and no more: an extent a
    # killed worker leaked would send the next session's page-out to disk.
    spill = tmp_path / "spill"
    spill.mkdir()
    os.environ.update(FARGPU_PAGING_TEST_DELAY_MS="20", FARGPU_SIM_MEM_BYTES=str(256 * MiB))
    # vmm-slabs: an extent of many 16 MiB slabs; the killed workers' slabs all come back to the pool
    kind = where.partition("-")[0]
    pool = ["--host-page-pool", "0"] if where == "disk" else ["--host-page-pool", "256M", "--host-pool-kind", kind]
    env = {"FARGPU_HOST_POOL_SLAB_MB": "16"} if where == "vmm-slabs" else {}
    try:
        s = start_server(tmp_path, "--idle-page-out", "1", *pool, "--spill-dir", str(spill), env_extra=env)
    finally:
        del os.environ["FARGPU_PAGING_TEST_DELAY_MS"], os.environ["FARGPU_SIM_MEM_BYTES"]
    paged = "paged disk" if where == "disk" else "paged host"
    try:
        if where.startswith("vmm"):
            _wait_log(s, r"host page pool: \d+ MiB of pinned host memory from the driver")
        for step in ("out", "in"):
            mark = len(s.log_text())
            client = _start_shapes(s.client_env())
            started = _wait_log(s, r"session (\w+) for lease .*-> worker (\d+)", after=mark)
            pid = int(started.group(2))
            if step == "out":
                _wait_log(s, r"paging out session \w+", after=mark)
            else:
                _wait_log(s, paged, after=mark)
                assert client.stdin is not None
                client.stdin.write("go\n")
                client.stdin.flush()
                _wait_log(s, r"paging in session \w+", after=mark)
            os.kill(pid, signal.SIGKILL)
            client.communicate(timeout=60)
            _wait_log(s, r"worker exit -9\)", after=mark)
            _wait_no_files(spill, f"spill files left after a kill during page-{step}")
            if where != "disk":  # the agent took the killed session's extent (if it held one) back: all is free
                _wait_log(s, rf"session {started.group(1)} gone: host page pool 256 of 256 MiB free", after=mark)
        if where != "disk":  # the killed sessions' extents are free again: the next page-out fits in the pool
            mark = len(s.log_text())
            client = _start_shapes(s.client_env())
            _wait_log(s, r"page-out of session \w+: paged host", after=mark)
            out, err = client.communicate("go\n", timeout=60)
            assert out.strip() == "SAME", out + err
        # Nothing of the killed sessions stays resident: a new session gets nearly all 256 MiB without paging.
        mark = len(s.log_text())
        res = subprocess.run([sys.executable, "-P", "-c", PRELUDE + "ctx0(); r, p = alloc(250 << 20); print(r)"],
                             env=s.client_env(), capture_output=True, text=True, timeout=60, cwd="/")
        assert res.stdout.strip() == "0", res.stdout + res.stderr
        assert "made room" not in s.log_text()[mark:]
    finally:
        stop_server(s)


def test_cudart_program_paged_while_idle_prints_what_it_prints_unpaged(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if not nvcc:
        pytest.skip("nvcc (CUDA 13.0) is needed to build the cudart paging program")
    prog = tmp_path / "paging_cudart"
    src = Path(__file__).resolve().parents[1] / "c" / "paging" / "paging_cudart.cu"
    built = subprocess.run([nvcc, "-O2", "-gencode", "arch=compute_90,code=sm_90", "-o", str(prog), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    outputs = {}
    for paged in (False, True):
        run_dir = tmp_path / f"paged-{paged}"
        run_dir.mkdir()
        s = start_server(run_dir, *(["--idle-page-out", "1"] if paged else []))
        try:
            res = subprocess.run([str(prog)], env=s.client_env(FARGPU_TEST_PAUSE_S="4", FARGPU_LOG="info"),
                                 capture_output=True,
                                 text=True, timeout=120, cwd="/")
            assert res.returncode == 0, res.stdout + res.stderr
            outputs[paged] = res.stdout
            log = s.log_text()
            assert ("page-out of session" in log and "paged host" in log) == paged, log[-2000:]
        finally:
            stop_server(s)
    assert outputs[True] == outputs[False] and outputs[True].endswith("done\n"), outputs


def test_failed_page_out_leaves_the_session_working_and_no_room_fails_the_call(tmp_path: Path) -> None:
    # No host pool and a spill directory that cannot exist (its parent is a file): every page-out fails.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file")
    os.environ["FARGPU_SIM_MEM_BYTES"] = str(256 * MiB)
    try:
        s = start_server(tmp_path, "--idle-page-out", "1", "--host-page-pool", "0", "--spill-dir",
                         str(blocker / "spill"))
    finally:
        del os.environ["FARGPU_SIM_MEM_BYTES"]
    try:
        holder = _start_shapes(s.client_env())  # 83 MiB resident
        m = _wait_log(s, r"page-out of session \w+: failed (.*)")
        assert "spill" in m.group(1) or "directory" in m.group(1) or "Errno" in m.group(1), m.group(0)
        # Another session wants more than is left; the only one that could give way cannot: its call fails, bounded.
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-P", "-c", PRELUDE + "ctx0(); r, p = alloc(200 << 20); print(r)"],
                             env=s.client_env(), capture_output=True, text=True, timeout=120, cwd="/")
        assert res.stdout.strip() == "2", res.stdout + res.stderr  # CUDA_ERROR_OUT_OF_MEMORY
        assert time.monotonic() - t0 < 60
        # The session whose page-out failed is as it was: every byte and address.
        out, err = holder.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
    finally:
        stop_server(s)


def test_deeper_level_is_refused_clearly_on_the_simulated_device(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--idle-page-out", "1", "--deep-after", "1", "--host-page-pool", "256M")
    try:
        client = _start_shapes(s.client_env())
        _wait_log(s, r"paged host")
        _wait_log(s, r"failed no deeper level here: the simulated device has no driver process checkpoint")
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
    finally:
        stop_server(s)


@pytest.mark.parametrize("mode", ["1", "fail-once"])
def test_deeper_level_protocol_no_cuda_before_restore(tmp_path: Path, mode: str) -> None:
    # The checkpoint itself is a test double here (nothing leaves the simulated device; bench/paging_gpu.py measures
    # the real one): this proves the worker asks the agent to restore before its next CUDA call, that a failed
    # restore fails that call and leaves the session paged, and that the data is all there afterwards.
    s = start_server(tmp_path, "--idle-page-out", "1", "--deep-after", "1", "--host-page-pool", "256M",
                     env_extra={"FARGPU_TEST_FAKE_CHECKPOINT": mode})
    try:
        client = _start_shapes(s.client_env())
        _wait_log(s, r"went to the deeper level: paged host \d+")
        assert "restored the driver checkpoint" not in s.log_text()
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        if mode == "fail-once":
            out, err = client.communicate(timeout=60)
            assert "dtoh" in out + err and "SAME" not in out, out + err  # the first call failed with a CUDA error
            _wait_log(s, r"restoring the driver checkpoint of session \w+ failed")
            client = _start_shapes(s.client_env())  # the node still works for others
            client.stdin.write("go\n")  # type: ignore[union-attr]
            client.stdin.flush()  # type: ignore[union-attr]
        out, err = client.communicate(timeout=60)
        assert out.strip() == "SAME", out + err
        log = s.log_text()
        m = _wait_log(s, r"restored the driver checkpoint of session")
        assert log.index("went to the deeper level") < m.start()
    finally:
        stop_server(s)


async def test_deeper_level_then_page_in_by_command_keeps_every_byte(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The node agent in this process, as the pool's commands drive it: page-out to the deeper level, then a page-in
    # by command. The page-in's "wake" wait runs inside the handling of the "pagein" control line; it once consumed
    # that line's buffer under it, and the worker crashed (seen on an H100). Checkpoint: the labelled test double.
    import asyncio

    from e2e_helpers import NodeServer

    from fargpu.server.auth import StaticTokenAuth
    from fargpu.server.backend import select
    from fargpu.server.node_agent import AgentConfig, NodeAgent

    monkeypatch.setenv("FARGPU_TEST_FAKE_CHECKPOINT", "1")
    agent = NodeAgent(select("sim"), StaticTokenAuth("deep-token-1"),
                      AgentConfig(listen="127.0.0.1:0", host_pool_bytes=256 * MiB, spill_dir=str(tmp_path / "spill")))
    await agent.start()
    try:
        env = NodeServer(agent.endpoint, "deep-token-1", tmp_path / "none.log", tmp_path / "l.jsonl",
                         None).client_env()  # type: ignore[arg-type]
        client = await asyncio.to_thread(_start_shapes, env)
        sid = next(iter(agent._sessions))
        res = await agent.page_out(sid, "deep")
        assert res.startswith("paged host") and " deep " in res, res
        res = await agent.page_in(sid)
        assert res.startswith("resident"), res
        out, err = await asyncio.to_thread(client.communicate, "go\n", 60)
        assert out.strip() == "SAME", out + err
        assert sid in agent._sessions  # the worker lives on
    finally:
        await agent.stop()
