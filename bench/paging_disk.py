"""Paging to and from disk against the disk's own raw speed, measured on the same file in the same run.

A node agent runs in this process (the simulated device by default, so this runs on a CPU machine; `--backend cuda`
on a GPU host), and one client session through the stub holds `--gib` GiB in allocations of `--alloc-mib` MiB, each
filled with its own value. Each cycle:

1. raw write: a file of the session's size written the way the yardstick writes (64 MiB O_DIRECT writes, one at a
   time, then fsync), then deleted (its deletion waited for and not timed);
2. page-out to disk (the worker's own timing of the step);
3. raw read of the session's spill file itself, before the page-in reads it: 64 MiB O_DIRECT reads one at a time
   (bench/paging_gpu.py's yardstick), and again with the worker's read depth and chunk (its `depth=` and `chunk=`);
   O_DIRECT leaves no page cache behind, so the page-in that follows reads the disk as the raw read did;
4. page-in (the worker's own timing of the step, and its phases), then the client checks a sample of every
   allocation's bytes;
5. the agent deletes the spill file off the page-in's path; the bench waits for that and reports how long it took.

Writes OUT/paging_disk.json: per cycle and as medians, page-in GB/s against both raw reads of the same file and
page-out GB/s against the raw write. `python bench/paging_disk.py OUT` (after `make venv`; run it from outside the
repo so the installed package is used, or with PYTHONPATH pointing at an install). Figures on the simulated device
say nothing about a GPU: its device copies are memcpy into host memory; what they show is the disk path's overhead
around the same reads."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import mmap
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

GiB = 1 << 30
MiB = 1 << 20
RAW_CHUNK = 64 * MiB

HOLD = r'''
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0: print(f"FAIL {what}: {r}", flush=True); sys.exit(1)
ok(cu.cuInit(0), "init")
ctx = ctypes.c_void_p(); ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain")
ok(cu.cuCtxSetCurrent(ctx), "cur")
total, each = int(sys.argv[1]), int(sys.argv[2]); ptrs = []
while sum(n for _, n in ptrs) < total:
    n = min(each, total - sum(n for _, n in ptrs))
    p = ctypes.c_uint64(); ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n)), "alloc")
    ok(cu.cuMemsetD32_v2(p, ctypes.c_uint(0x5a000000 + len(ptrs)), ctypes.c_size_t(n // 4)), "memset")
    ptrs.append((p.value, n))
ok(cu.cuCtxSynchronize(), "sync"); print("READY", len(ptrs), flush=True)
for line in sys.stdin:
    bad = 0
    for i, (p, n) in enumerate(ptrs):
        for off in sorted({0, n // 2 // 4096 * 4096, n - 4096}):
            buf = (ctypes.c_uint * 1024)()
            ok(cu.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(p + off), ctypes.c_size_t(4096)), "dtoh")
            bad += sum(1 for v in buf if v != 0x5a000000 + i)
    print("CHECK", bad, flush=True)
'''


def _open_direct(path: Path, flags: int) -> tuple[int, bool]:
    """O_DIRECT where the filesystem takes it, else buffered (then the page cache is dropped around each pass)."""
    try:
        return os.open(path, flags | os.O_DIRECT, 0o600), True
    except OSError:
        return os.open(path, flags, 0o600), False


def raw_write(path: Path, size: int) -> float:
    """GB/s writing `size` bytes the yardstick's way (64 MiB writes, one at a time, then fsync)."""
    buf = mmap.mmap(-1, RAW_CHUNK)
    buf.write(os.urandom(MiB) * (RAW_CHUNK // MiB))
    fd, _ = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        t0 = time.perf_counter()
        for off in range(0, size, RAW_CHUNK):
            n = min(RAW_CHUNK, size - off)
            os.pwritev(fd, [memoryview(buf)[:n]], off)
        os.fsync(fd)
        return size / (time.perf_counter() - t0) / 1e9
    finally:
        os.close(fd)


def raw_read(path: Path, size: int, chunk: int = RAW_CHUNK, depth: int = 1) -> tuple[float, bool]:
    """GB/s reading the first `size` bytes of `path` in `chunk`-byte reads, `depth` of them in flight (threads), and
    whether O_DIRECT was used (if not, the file's page cache is dropped first, so the disk is read)."""
    fd, direct = _open_direct(path, os.O_RDONLY)
    try:
        if not direct:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        nxt = [0]
        lock = threading.Lock()
        errors: list[BaseException] = []

        def reader() -> None:
            buf = mmap.mmap(-1, chunk)
            try:
                while True:
                    with lock:
                        off = nxt[0]
                        nxt[0] += chunk
                    if off >= size:
                        return
                    os.preadv(fd, [buf], off)
            except OSError as e:
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(depth)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return size / dt / 1e9, direct
    finally:
        os.close(fd)


def fields(line: str) -> dict[str, Any]:
    """A worker status line's figures: word, bytes, ns, and its key=value phases."""
    parts = line.split()
    out: dict[str, Any] = {"line": line}
    if parts[:1] == ["resident"] and len(parts) >= 3:
        out.update(bytes=int(parts[1]), ns=int(parts[2]))
    elif parts[:1] == ["paged"] and len(parts) >= 4:
        out.update(bytes=int(parts[2]), ns=int(parts[3]))
    for p in parts:
        k, eq, v = p.partition("=")
        if eq and v.isdigit():
            out[k] = int(v)
    return out


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def start_client(python: str, size: int, each: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-c", HOLD, str(size), str(each)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--backend", default="sim")
    ap.add_argument("--gib", type=float, default=1.0, help="the session's size")
    ap.add_argument("--alloc-mib", type=int, default=1024, help="the size of each of its allocations")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--spill-dir", default="/var/tmp/fargpu-spill-bench")
    ap.add_argument("--stub-dir", default="", help="the stub's folder (default: the installed package's)")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(a.spill_dir).mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(a))
    (out / "paging_disk.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=1))
    return 0 if result["all_bytes_checked_ok"] else 1


async def run(a: argparse.Namespace) -> dict[str, Any]:
    spill = Path(a.spill_dir)
    from fargpu import paths
    from fargpu.server.auth import StaticTokenAuth
    from fargpu.server.backend import select
    from fargpu.server.node_agent import AgentConfig, NodeAgent

    stub = a.stub_dir or str(paths.stub_dir())
    size = int(a.gib * GiB)
    token = "paging-disk-bench"
    os.environ.setdefault("FARGPU_SIM_MEM_BYTES", str(size + 2 * GiB))
    # The simulated device keeps released memory for the page-in to reuse (server/sim/sim_vmm.c says why).
    os.environ.setdefault("FARGPU_SIM_KEEP_FREED_MB", str((size >> 20) + 64))
    agent = NodeAgent(select(a.backend), StaticTokenAuth(token),
                      AgentConfig(listen="127.0.0.1:0", host_pool_bytes=0, spill_dir=str(spill)))
    await agent.start()
    env = dict(os.environ, LD_LIBRARY_PATH=stub, LD_PRELOAD=f"{stub}/libcuda.so.1", FARGPU_SERVER=agent.endpoint,
               FARGPU_TOKEN=token)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"), "backend": a.backend, "session_bytes": size,
        "alloc_bytes": a.alloc_mib * MiB, "spill_dir": str(spill),
        "worker_env": {k: v for k, v in os.environ.items() if k.startswith("FARGPU_SPILL_")}, "cycles": []}
    client = start_client(a.python, size, a.alloc_mib * MiB, env)
    assert client.stdout is not None and client.stdin is not None
    try:
        ready = (await asyncio.to_thread(client.stdout.readline)).split()
        if ready[:1] != ["READY"]:
            raise RuntimeError(f"the client did not start: {ready} {client.stderr.read() if client.stderr else ''}")
        result["allocations"] = int(ready[1])
        sid = next(iter(agent._sessions))
        deleter = getattr(agent.pager, "spill_deleter", None)
        for cycle in range(a.cycles):
            row: dict[str, Any] = {"cycle": cycle}
            probe = spill / "raw-write.bin"
            row["raw_write_GBps"] = await asyncio.to_thread(raw_write, probe, size)
            await asyncio.to_thread(probe.unlink)
            res = await agent.page_out(sid, "disk")
            po = fields(res)
            if "ns" not in po:
                raise RuntimeError(f"page-out failed: {res}")
            row["pageout"] = po
            row["pageout_disk_GBps"] = po["bytes"] / po["ns"]
            spill_file = spill / f"{sid}.pages"
            row["raw_read_GBps"], row["raw_direct"] = await asyncio.to_thread(raw_read, spill_file, po["bytes"])
            depth, chunk = int(os.environ.get("FARGPU_SPILL_READ_DEPTH", "2")), int(
                os.environ.get("FARGPU_SPILL_CHUNK_MB", "32")) * MiB
            row["raw_read_worker_way_GBps"], _ = await asyncio.to_thread(raw_read, spill_file, po["bytes"], chunk,
                                                                         depth)
            res = await agent.page_in(sid)
            pi = fields(res)
            if "ns" not in pi:
                raise RuntimeError(f"page-in failed: {res}")
            row["pagein"] = pi
            row["pagein_disk_GBps"] = pi["bytes"] / pi["ns"]
            t = time.perf_counter()
            if deleter is not None:
                await asyncio.to_thread(deleter.idle, 600.0)
            row["spill_delete_s"] = time.perf_counter() - t  # off the page-in's path (0 where the worker deleted it)
            client.stdin.write("check\n")
            client.stdin.flush()
            check = (await asyncio.to_thread(client.stdout.readline)).split()
            row["bad_samples"] = int(check[1]) if check[:1] == ["CHECK"] else check
            best_raw = max(row["raw_read_GBps"], row["raw_read_worker_way_GBps"])
            row["pagein_vs_raw_read"] = row["pagein_disk_GBps"] / row["raw_read_GBps"]
            row["pagein_vs_best_raw_read"] = row["pagein_disk_GBps"] / best_raw
            row["pageout_vs_raw_write"] = row["pageout_disk_GBps"] / row["raw_write_GBps"]
            result["cycles"].append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                              if k not in ("pageout", "pagein")}), flush=True)
            print("  page-in:", pi["line"], flush=True)
    finally:
        client.stdin.close()
        await asyncio.to_thread(client.wait, 60)
        await agent.stop()
    rows = result["cycles"]
    result["median"] = {k: median(rows, k) for k in (
        "raw_write_GBps", "pageout_disk_GBps", "pageout_vs_raw_write", "raw_read_GBps", "raw_read_worker_way_GBps",
        "pagein_disk_GBps", "pagein_vs_raw_read", "pagein_vs_best_raw_read", "spill_delete_s")}
    result["all_bytes_checked_ok"] = all(r.get("bad_samples") == 0 for r in rows)
    return result


if __name__ == "__main__":
    sys.exit(main())
