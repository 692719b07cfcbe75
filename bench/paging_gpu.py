"""Paging on the real GPU, in one run (bench/paging_gpu.sh builds and calls this): a node agent on the GPU in this
process, clients through the stub, every client proving it never loaded the real driver.

1. Disk: the spill directory's raw O_DIRECT write and read speed (the yardstick for paging to disk); and before each
   page-in from disk, the raw read speed of that session's spill file itself (the same file, read the yardstick's
   way and the worker's way: bench/paging_disk.py), which the page-in is compared with.
2. For sessions of each size (1, 8, 32 GiB by default, in 1 GiB allocations): page-out and page-in GB/s to the
   host page pool and to disk (the worker's own timing of the step), NVML's used memory before and after each
   page-out, a check of sample bytes after each page-in, then the driver's process checkpoint
   (cuCheckpointProcessLock/Checkpoint/Restore/Unlock on the session's worker) timed on the same session.
3. The first call's latency after paging in a 2 GiB session (a client-side timer around the call that pages in).
4. GPT-2 (random weights): a forward pass, idle, page-out; NVML shows the memory released; a second session
   allocates nearly all of the GPU and computes; the first resumes and its logits are bit-identical to the
   forward pass before paging; the first call's latency after paging.

Writes OUT/paging_gpu.json (figures named for what they measure, with date, GPU, driver and commit)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from acceptance import check_proof
from paging_disk import raw_read
from proof_file import read_proof

GiB = 1 << 30

HOLD = r'''
import ctypes, sys, time
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0: print(f"FAIL {what}: {r}", flush=True); sys.exit(1)
ok(cu.cuInit(0), "init")
ctx = ctypes.c_void_p(); ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain")
ok(cu.cuCtxSetCurrent(ctx), "cur")
gib = int(sys.argv[1]); ptrs = []
for i in range(gib):
    p = ctypes.c_uint64(); ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 30)), "alloc")
    ok(cu.cuMemsetD32_v2(p, ctypes.c_uint(0x5a000000 + i), ctypes.c_size_t(1 << 28)), "memset"); ptrs.append(p.value)
ok(cu.cuCtxSynchronize(), "sync"); print("READY", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    if line.startswith("touch"):  # one small call that needs the GPU (it pages the session in)
        last = ctypes.c_uint64(ptrs[0] + (1 << 30) - 4096)
        ok(cu.cuMemsetD32_v2(last, ctypes.c_uint(0x5a000000), ctypes.c_size_t(1024)), "touch")
        ok(cu.cuCtxSynchronize(), "sync")
        print("TOUCH", time.perf_counter() - t0, flush=True); continue
    bad = 0
    for i, p in enumerate(ptrs):
        for off in (0, (1 << 29), (1 << 30) - 4096):
            buf = (ctypes.c_uint * 1024)()
            ok(cu.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(p + off), ctypes.c_size_t(4096)), "dtoh")
            bad += sum(1 for v in buf if v != 0x5a000000 + i)
    print("CHECK", bad, time.perf_counter() - t0, flush=True)
'''

GPT2 = r'''
import hashlib, os, sys, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0); torch.use_deterministic_algorithms(True)
model = GPT2LMHeadModel(GPT2Config()).half().cuda().eval()
ids = torch.randint(0, 50257, (16, 512), device="cuda", generator=None)
def fwd():
    with torch.no_grad():
        return model(ids).logits
out = fwd(); torch.cuda.synchronize()
print("FWD1", hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest(), torch.cuda.memory_reserved(), flush=True)
sys.stdin.readline()
t0 = time.perf_counter(); x = ids.sum().item(); first = time.perf_counter() - t0
out = fwd(); torch.cuda.synchronize()
print("FWD2", hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest(), first, flush=True)
sys.stdin.readline()
t0 = time.perf_counter(); x = ids.sum().item(); first = time.perf_counter() - t0
out = fwd(); torch.cuda.synchronize()
print("FWD3", hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest(), first, flush=True)
'''

FILL = r'''
import torch, sys
free, total = torch.cuda.mem_get_info()
n = int(free * 0.9) // 2 // 8192 * 8192
a = torch.ones(n // 8192, 4096, dtype=torch.float16, device="cuda")
s = (a[:8192] @ a[:8192].T).float().sum().item()  # computes on the memory it holds
print("FILLED", n * 2, free, s > 0, flush=True)
'''


def nvml_used() -> int:
    """NVML's used memory on GPU 0 (-1 without NVML: the simulated device's smoke run)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return -1
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    finally:
        pynvml.nvmlShutdown()


def disk_speed(directory: Path, size: int = 4 * GiB) -> dict[str, float]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "raw-speed.bin"
    chunk = 64 << 20
    buf = mmap.mmap(-1, chunk)
    buf.write(os.urandom(1 << 20) * 64)
    flags = os.O_DIRECT if hasattr(os, "O_DIRECT") else 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o600)
    t0 = time.perf_counter()
    for i in range(size // chunk):
        os.pwritev(fd, [buf], i * chunk)
    os.fsync(fd)
    w = time.perf_counter() - t0
    os.close(fd)
    fd = os.open(path, os.O_RDONLY | flags)
    t0 = time.perf_counter()
    for i in range(size // chunk):
        os.preadv(fd, [buf], i * chunk)
    r = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return {"disk_raw_write_GBps": size / w / 1e9, "disk_raw_read_GBps": size / r / 1e9}


def close_quietly(p: subprocess.Popen[str]) -> None:
    """Ends a client's input; one that died already (its failure is recorded) is no error of the bench."""
    if p.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            p.stdin.close()


class Checkpoint:
    """The driver's process checkpoint, called on a worker's pid from this process (the bench, not a client)."""

    def __init__(self) -> None:
        self.cu = ctypes.CDLL("libcuda.so.1")
        self.cu.cuInit(0)

    def cycle(self, pid: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        out["lock_rc"] = self.cu.cuCheckpointProcessLock(ctypes.c_int(pid), None)
        t1 = time.perf_counter()
        out["checkpoint_rc"] = self.cu.cuCheckpointProcessCheckpoint(ctypes.c_int(pid), None)
        t2 = time.perf_counter()
        out["nvml_used_checkpointed"] = nvml_used()
        t3 = time.perf_counter()
        out["restore_rc"] = self.cu.cuCheckpointProcessRestore(ctypes.c_int(pid), None)
        t4 = time.perf_counter()
        out["unlock_rc"] = self.cu.cuCheckpointProcessUnlock(ctypes.c_int(pid), None)
        out.update(lock_s=t1 - t0, checkpoint_s=t2 - t1, restore_s=t4 - t3)
        return out


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stub-dir", required=True)
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--spill-dir", default="/tmp/fargpu-spill")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--backend", default="cuda", help="cuda; sim only for a smoke run of this script")
    ap.add_argument("--disk-bytes", type=int, default=8 * GiB)
    ap.add_argument("--same-file-bytes", type=int, default=4 * GiB,
                    help="how much of each spill file is read raw before its page-in")
    a = ap.parse_args()
    out = Path(a.out)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    from fargpu.server.auth import StaticTokenAuth
    from fargpu.server.backend import select
    from fargpu.server.node_agent import AgentConfig, NodeAgent

    token = "paging-bench-token"
    cfg = AgentConfig(listen="127.0.0.1:0", host_pool_bytes=(max(sizes) + 2) * GiB, spill_dir=a.spill_dir)
    agent = NodeAgent(select(a.backend), StaticTokenAuth(token), cfg)
    await agent.start()
    proof = out / "proof.jsonl"
    env = dict(os.environ, LD_LIBRARY_PATH=a.stub_dir, LD_PRELOAD=f"{a.stub_dir}/libcuda.so.1",
               FARGPU_SERVER=agent.endpoint, FARGPU_TOKEN=token, FARGPU_PROOF_FILE=str(proof),
               CUBLAS_WORKSPACE_CONFIG=":4096:8")
    result: dict[str, Any] = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                              "commit": os.environ.get("FARGPU_COMMIT", "unknown"), "sessions": {}}
    dev = agent.devices()[0]
    result["gpu"], result["driver"], result["backend"] = dev.name, agent.backend_info.driver_version, a.backend
    t0 = time.perf_counter()
    await asyncio.to_thread(agent.pager.pool.ready.wait, 120)  # the host pool's pages allocated up front
    result["host_pool_prefault_s"] = time.perf_counter() - t0
    result["host_pool_kind"] = agent.pager.pool.kind  # vmm: pinned driver memory, one DMA per allocation
    result["host_pool_slab_bytes"] = agent.pager.pool.slab  # vmm: the slabs each step maps whole (0: a memfd)
    result["host_pool_slabs"] = len(agent.pager.pool.fds)
    result.update(disk_speed(Path(a.spill_dir), a.disk_bytes))
    print("disk", result["disk_raw_write_GBps"], result["disk_raw_read_GBps"], flush=True)
    ckpt = Checkpoint() if a.backend == "cuda" else None

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([a.python, "-c", code, *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    async def line(p: subprocess.Popen[str]) -> str:
        assert p.stdout is not None
        return (await asyncio.to_thread(p.stdout.readline)).strip()

    def send(p: subprocess.Popen[str], text: str) -> None:
        assert p.stdin is not None
        p.stdin.write(text + "\n")
        p.stdin.flush()

    def newest_session() -> str:
        return max(agent._sessions.values(), key=lambda s: s.started).info.session_id

    for gib in sizes:
        # With a memfd pool: the direct route (DMA into the registered extent) first, in a session of its own (the
        # worker reads the route when it starts); then the default route with the disk, deep and checkpoint steps.
        os.environ["FARGPU_PAGING_DMA"] = "direct"
        direct: dict[str, Any] = {}
        c = start(HOLD, str(gib)) if agent.pager.pool.kind == "memfd" else None  # routes of a memfd pool only
        if c is not None and await line(c) == "READY":
            sid = newest_session()
            res = await agent.page_out(sid, "host")
            r_in = await agent.page_in(sid) if res.startswith("paged") else ""
            send(c, "check")
            check = (await line(c)).split()
            parts, pin = res.split(), r_in.split()
            direct = {"pageout": res, "pagein": r_in,
                      "pageout_host_direct_GBps": int(parts[2]) / int(parts[3]) if parts[0] == "paged" else None,
                      "pagein_host_direct_GBps": int(pin[1]) / int(pin[2]) if pin[:1] == ["resident"] else None,
                      "bad_samples_after": int(check[1]) if check[:1] == ["CHECK"] else check}
        if c is not None and c.stdin:
            close_quietly(c)
            await asyncio.to_thread(c.wait, 120)
        os.environ.pop("FARGPU_PAGING_DMA", None)
        c = start(HOLD, str(gib))
        ready = await line(c)
        if ready != "READY":
            result["sessions"][f"{gib}GiB"] = {"error": ready + (c.stderr.read() if c.stderr else "")}
            continue
        sid = newest_session()
        rec: dict[str, Any] = {"host_direct": direct}
        for where in ("host", "disk"):
            before = nvml_used()
            res = await agent.page_out(sid, where)
            after = nvml_used()
            parts = res.split()
            if parts[0] != "paged":
                rec[where] = {"error": res}
                continue
            same_file: dict[str, Any] = {}
            if where == "disk" and (spill := agent.pager.states[sid].spill) is not None:
                # The spill file's own raw read speed, just before the page-in reads it (O_DIRECT: no page cache).
                # Its first --same-file-bytes at most, to bound the run's time.
                n_raw = min(int(parts[2]), a.same_file_bytes)
                same_file["raw_read_same_file_bytes"] = n_raw
                same_file["raw_read_same_file_GBps"], same_file["raw_read_direct"] = await asyncio.to_thread(
                    raw_read, spill, n_raw)
                depth = int(os.environ.get("FARGPU_SPILL_READ_DEPTH", "2"))
                chunk = int(os.environ.get("FARGPU_SPILL_CHUNK_MB", "32")) << 20
                same_file["raw_read_same_file_worker_way_GBps"], _ = await asyncio.to_thread(
                    raw_read, spill, n_raw, chunk, depth)
            r_in = await agent.page_in(sid)
            if where == "disk":  # the agent deletes the spill file off the page-in's path: wait, and say how long
                t_del = time.perf_counter()
                await asyncio.to_thread(agent.pager.spill_deleter.idle, 600.0)
                same_file["spill_delete_s"] = time.perf_counter() - t_del
            send(c, "check")
            check = (await line(c)).split()
            bytes_out, ns_out = int(parts[2]), int(parts[3])
            pin = r_in.split()
            rec[where] = {"bytes": bytes_out, f"pageout_{where}_GBps": bytes_out / ns_out,
                          f"pagein_{where}_GBps": int(pin[1]) / int(pin[2]) if pin[0] == "resident" else None,
                          "pageout": res, "pagein": r_in, "nvml_used_before": before, "nvml_used_paged": after,
                          "unpageable_bytes": int(parts[4]) if len(parts) > 4 else None,
                          "bad_samples_after": int(check[1]) if check[:1] == ["CHECK"] else check, **same_file}
            if same_file.get("raw_read_same_file_GBps") and rec[where][f"pagein_{where}_GBps"]:
                rec[where]["pagein_disk_vs_raw_read_same_file"] = (
                    rec[where][f"pagein_{where}_GBps"] / max(same_file["raw_read_same_file_GBps"],
                                                              same_file["raw_read_same_file_worker_way_GBps"]))
        # The deeper level: host page-out, then the driver's process checkpoint of the worker takes the rest.
        before = nvml_used()
        res = await agent.page_out(sid, "deep")
        deep_used = nvml_used()
        t1 = time.perf_counter()
        r_in = await agent.page_in(sid) if res.startswith("paged") else ""
        pagein_wall = time.perf_counter() - t1
        send(c, "check")
        check = (await line(c)).split()
        rec["deep"] = {"pageout": res, "pagein": r_in, "nvml_used_before": before, "nvml_used_deep": deep_used,
                       "pagein_wall_s": pagein_wall,
                       "deep_pagein_GBps": gib * GiB / pagein_wall / 1e9 if r_in else None,
                       "bad_samples_after": int(check[1]) if check[:1] == ["CHECK"] else check}
        try:
            if ckpt is None:
                raise OSError("no driver checkpoint on the simulated device")
            cp = await asyncio.to_thread(ckpt.cycle, agent._sessions[sid].proc.pid)
            cp["checkpoint_GBps"] = gib * GiB / cp["checkpoint_s"] / 1e9
            cp["restore_GBps"] = gib * GiB / cp["restore_s"] / 1e9
            send(c, "check")
            cp["bad_samples_after"] = (await line(c)).split()[1:2]
            rec["driver_checkpoint"] = cp
        except (OSError, AttributeError) as e:
            rec["driver_checkpoint"] = {"error": str(e)}
        if c.stdin:
            close_quietly(c)
        await asyncio.to_thread(c.wait, 120)
        result["sessions"][f"{gib}GiB"] = rec
        print(gib, json.dumps(rec), flush=True)

    # The first call after paging a 2 GiB session in: the client times the call that brings it back.
    c = start(HOLD, "2")
    if await line(c) == "READY":
        sid = newest_session()
        res = await agent.page_out(sid, "host")
        send(c, "touch")
        touch = (await line(c)).split()
        result["first_call_after_pagein_2GiB"] = {"pageout": res, "first_call_s": float(touch[1])
                                                  if touch[:1] == ["TOUCH"] else touch}
        if c.stdin:
            close_quietly(c)
        await asyncio.to_thread(c.wait, 120)

    if not a.skip_gpt2:
        g = start(GPT2)
        fwd1 = (await line(g)).split()
        gp: dict[str, Any] = {"fwd1": fwd1}
        if fwd1[:1] == ["FWD1"]:
            sid = newest_session()
            before = nvml_used()
            gp["pageout"] = await agent.page_out(sid, "host")
            gp["nvml_used_before"], gp["nvml_used_paged"] = before, nvml_used()
            f = start(FILL)
            gp["second_session"] = await line(f)
            await asyncio.to_thread(f.wait, 120)
            if not gp["second_session"].startswith("FILLED"):
                gp["second_session_stderr"] = f.stderr.read()[-2000:] if f.stderr else ""
            send(g, "go")
            fwd2 = (await line(g)).split()
            gp["fwd2"] = fwd2
            gp["bit_identical"] = len(fwd2) > 1 and fwd2[1] == fwd1[1]
            gp["first_call_after_pagein_s"] = float(fwd2[2]) if len(fwd2) > 2 else None
            before = nvml_used()
            gp["deep_pageout"] = await agent.page_out(sid, "deep")
            gp["deep_nvml_used_before"], gp["deep_nvml_used_paged"] = before, nvml_used()
            send(g, "go")
            fwd3 = (await line(g)).split()
            gp["fwd3"] = fwd3
            gp["deep_bit_identical"] = len(fwd3) > 1 and fwd3[1] == fwd1[1]
            gp["deep_first_call_after_pagein_s"] = float(fwd3[2]) if len(fwd3) > 2 else None
        else:
            gp["stderr"] = g.stderr.read()[-3000:] if g.stderr else ""
        await asyncio.to_thread(g.wait, 120)
        result["gpt2"] = gp
        print("gpt2", json.dumps(gp), flush=True)

    await agent.stop()
    ok, problems, notes = check_proof(proof, Path(a.stub_dir))
    result["proof"] = {"clean": ok, "clients": len(read_proof(proof)[0]), "problems": problems, "notes": notes}
    (out / "paging_gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "sessions"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
