"""Paging to disk on the simulated device (server/replay/spill.c, server/pager.py): the spill file is streamed in
chunks that do not line up with the allocations and come back with every byte; a filesystem that refuses O_DIRECT
is used through the page cache, and says so; a spill file cut short fails the page-in cleanly, the session stays
paged with its file, and pages in with every byte once the file is whole again; the agent deletes the file off the
page-in's path. Nothing here is timed: bench/paging_disk.py measures the speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import NodeServer, start_server, stop_server
from test_paging import SHAPES, _start_shapes, _wait_log, _wait_no_files

MiB = 1 << 20

# SHAPES' allocations, but the first call after the page-out may fail (its result is printed), and a second line
# checks everything.
SHAPES_TWICE = SHAPES.replace('''print("FILLED", flush=True)
sys.stdin.readline()''', '''print("FILLED", flush=True)
sys.stdin.readline()
probe = ctypes.create_string_buffer(64)
print("FIRST", cu.cuMemcpyDtoH_v2(probe, ctypes.c_uint64(bufs[0][0]), ctypes.c_size_t(64)), flush=True)
sys.stdin.readline()''')


def _disk_server(tmp: Path, spill: Path, **env: str) -> NodeServer:
    return start_server(tmp, "--idle-page-out", "1", "--host-page-pool", "0", "--spill-dir", str(spill),
                        env_extra=env)


def test_spill_in_small_chunks_with_three_reads_in_flight_keeps_every_byte(tmp_path: Path) -> None:
    # 1 MiB chunks: every 2 MiB allocation spans two reads, and the 32 and 48 MiB ones dozens; three reads in flight
    # over 128 slots' worth of chunks, so slots are reused many times over.
    spill = tmp_path / "spill"
    s = _disk_server(tmp_path, spill, FARGPU_SPILL_CHUNK_MB="1", FARGPU_SPILL_READ_DEPTH="3")
    try:
        client = _start_shapes(s.client_env())
        m = _wait_log(s, r"page-out of session (\w+): paged disk (\d+) .*direct=1")
        assert (spill / f"{m.group(1)}.pages").stat().st_size >= int(m.group(2))
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
        r = _wait_log(s, r"resident again from disk: (\d+) .* depth=(\d+) chunk=(\d+) direct=(\d)")
        assert r.groups()[1:] == ("3", str(MiB), "1") and int(r.group(1)) == int(m.group(2)), r.group(0)
        _wait_no_files(spill)
    finally:
        stop_server(s)


def test_spill_dir_that_refuses_o_direct_is_used_through_the_page_cache(tmp_path: Path) -> None:
    # ramfs has no direct I/O: opening a file there with O_DIRECT fails with EINVAL.
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "none", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a ramfs needs root: {mounted.stderr.strip()}")
    try:
        probe = mnt / "probe"
        with pytest.raises(OSError):
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600))
        spill = mnt / "spill"
        s = _disk_server(tmp_path, spill)
        try:
            client = _start_shapes(s.client_env())
            _wait_log(s, r"paged disk \d+ .*direct=0")
            out, err = client.communicate("go\n", timeout=60)
            assert out.strip() == "SAME", out + err
            _wait_log(s, r"resident again from disk: .*direct=0")
            assert "refused O_DIRECT (at open); spilling through the page cache" in s.log_text()
            _wait_no_files(spill)
        finally:
            stop_server(s)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_spill_file_cut_short_fails_the_page_in_and_the_session_stays_paged(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    s = _disk_server(tmp_path, spill)
    try:
        client = subprocess.Popen([sys.executable, "-P", "-c", SHAPES_TWICE], env=s.client_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd="/")
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "FILLED"
        m = _wait_log(s, r"page-out of session (\w+): paged disk (\d+)")
        f = spill / f"{m.group(1)}.pages"
        whole = f.read_bytes()
        cut = len(whole) // 2 + 12345
        os.truncate(f, cut)
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "FIRST 2"  # CUDA_ERROR_OUT_OF_MEMORY: the call failed cleanly
        w = _wait_log(s, r"page-in of session \w+ failed, it stays paged: (.*)")
        assert "the spill file ends early" in w.group(1), w.group(0)
        assert f.stat().st_size == cut  # the file is left as it was, for the next try
        with f.open("ab") as fh:  # the file whole again: the next call pages in, every byte in its place
            fh.write(whole[cut:])
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
        _wait_log(s, r"resident again from disk")
        _wait_no_files(spill)
    finally:
        stop_server(s)


def test_spill_file_missing_fails_the_page_in_with_the_reason(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    s = _disk_server(tmp_path, spill)
    try:
        client = subprocess.Popen([sys.executable, "-P", "-c", SHAPES_TWICE], env=s.client_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd="/")
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "FILLED"
        m = _wait_log(s, r"page-out of session (\w+): paged disk")
        f = spill / f"{m.group(1)}.pages"
        away = tmp_path / "away.pages"
        f.rename(away)
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "FIRST 2"
        w = _wait_log(s, r"page-in of session \w+ failed, it stays paged: (.*)")
        assert re.search(r"cannot open the spill file .*No such file", w.group(1)), w.group(0)
        away.rename(f)
        out, err = client.communicate("go\n", timeout=60)
        assert out.strip() == "SAME", out + err
        _wait_no_files(spill)
    finally:
        stop_server(s)


async def test_a_session_pages_out_to_disk_again_at_once_after_a_page_in(tmp_path: Path) -> None:
    # The agent in this process, as the pool's commands drive it. A page-in's spill file is renamed for deletion by
    # the time the page-in is answered, so the session's next page-out to its own path never meets the old file,
    # however long deleting it takes; three round trips back to back, every byte back each time.
    import asyncio

    from fargpu.server.auth import StaticTokenAuth
    from fargpu.server.backend import select
    from fargpu.server.node_agent import AgentConfig, NodeAgent

    spill = tmp_path / "spill"
    agent = NodeAgent(select("sim"), StaticTokenAuth("spill-token-1"),
                      AgentConfig(listen="127.0.0.1:0", host_pool_bytes=0, spill_dir=str(spill)))
    await agent.start()
    try:
        env = NodeServer(agent.endpoint, "spill-token-1", tmp_path / "none.log", tmp_path / "l.jsonl",
                         None).client_env()  # type: ignore[arg-type]
        client = await asyncio.to_thread(_start_shapes, env)
        sid = next(iter(agent._sessions))
        for _ in range(3):
            res = await agent.page_out(sid, "disk")
            assert res.startswith("paged disk"), res
            assert (spill / f"{sid}.pages").exists()
            res = await agent.page_in(sid)
            assert res.startswith("resident"), res
            assert not (spill / f"{sid}.pages").exists()  # renamed at once; the unlink runs on the deleter's thread
        out, err = await asyncio.to_thread(client.communicate, "go\n", 60)
        assert out.strip() == "SAME", out + err
        assert await asyncio.to_thread(agent.pager.spill_deleter.idle, 30.0)
        assert list(spill.iterdir()) == []
    finally:
        await agent.stop()


def test_disk_paging_bench_runs_on_the_simulated_device(tmp_path: Path) -> None:
    # bench/paging_disk.py end to end on a small session: it writes its JSON, every sampled byte came back, and each
    # cycle has both raw reads of the spill file and the page-in's phases. (Its speeds are not checked here.)
    bench = Path(__file__).resolve().parents[2] / "bench" / "paging_disk.py"
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(bench), str(out), "--gib", "0.0625", "--alloc-mib", "6", "--cycles", "1",
                          "--spill-dir", str(tmp_path / "spill")], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]


    d = json.loads((out / "paging_disk.json").read_text())
    assert d["all_bytes_checked_ok"] and d["allocations"] == 11, d
    row = d["cycles"][0]
    assert row["raw_read_GBps"] > 0 and row["raw_read_worker_way_GBps"] > 0 and row["pagein_disk_GBps"] > 0
    assert {"open_ns", "first_ns", "wait_ns", "stream_ns", "depth", "chunk", "direct"} <= set(row["pagein"]), row
    _wait_no_files(tmp_path / "spill")


def test_spill_deleter_removes_what_a_dead_agent_left_mid_delete_and_nothing_else(tmp_path: Path) -> None:
    from fargpu.server.pager import SpillDeleter

    left = tmp_path / "abc.deleting-123-4.pages"  # renamed for deletion by an agent that died before the unlink
    live = tmp_path / "def.pages"  # another session's spill file: not this agent's to remove at start
    left.write_bytes(b"x" * 4096)
    live.write_bytes(b"y" * 4096)
    d = SpillDeleter(tmp_path)
    try:
        assert d.idle(10.0)
        assert not left.exists() and live.exists()
        d.delete(live)
        assert not live.exists()  # renamed at once
        assert d.idle(10.0)
        assert list(tmp_path.iterdir()) == []
    finally:
        d.close()
