"""Parking on the GPU host, in one run (bench/park_gpu.sh): a PyTorch session computes, goes idle, is paged out and
parked by node server A (its worker exits), A is stopped, a freshly started node server B takes its address, and the
client's next call resumes the session there. Its outputs must be bit-identical to an unparked run of the same
program; reported: the seconds from the parked session's first call to its reply (reconnect, fetch from the park
store, restore, page-in), the park's own time and size, whether module globals moved on restore, and the proof that
no client loaded the real driver. A second session, parked and resumed beside it, checks parking's fidelity on the
driver (tests/python/park_fidelity_program.py): a `__device__` variable a kernel changed without the client naming
it, recorded events and their elapsed time, a global's pre-park address in a kernel parameter and a memset; and the
worker's count of the module globals it listed from PyTorch's (compressed) images and saved by name.
--backend sim --client ctypes is a dry run of the script (no GPU, no PyTorch)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TORCH = r'''
import hashlib, sys, time
import torch
torch.manual_seed(0); torch.use_deterministic_algorithms(True)
n = int(float(sys.argv[1]) * (1 << 30)) // 4
big = torch.arange(n, dtype=torch.float32, device="cuda")  # one allocation of the session's size
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)).cuda()
x = torch.randn(256, 1024, device="cuda")
def h(t): return hashlib.sha256(t.detach().cpu().numpy().tobytes()).hexdigest()[:16]
with torch.no_grad():
    y = model(x); torch.cuda.synchronize()
print("STEP1", h(y), torch.cuda.memory_reserved(), flush=True)
sys.stdin.readline()
t0 = time.perf_counter(); v = big[12345].item(); first = time.perf_counter() - t0
with torch.no_grad():
    y2 = model(x + big[: 256 * 1024].view(256, 1024) * 1e-9)
print("STEP2", h(y2), h(big[:: 1 << 16]), float(big.double().sum().item()), v, first, flush=True)
'''

CTYPES = r'''
import ctypes, hashlib, sys, time
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, w):
    if r: print("FAIL", w, r, flush=True); sys.exit(1)
ok(cu.cuInit(0), "init"); ctx = ctypes.c_void_p()
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain"); ok(cu.cuCtxSetCurrent(ctx), "current")
n = int(float(sys.argv[1]) * (1 << 30)); p = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n)), "alloc")
ok(cu.cuMemsetD32_v2(p, ctypes.c_uint(0x5a5a1234), ctypes.c_size_t(n // 4)), "memset")
print("STEP1", p.value, n, flush=True)
sys.stdin.readline()
t0 = time.perf_counter(); buf = ctypes.create_string_buffer(4096)
ok(cu.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(p.value + n - 4096), ctypes.c_size_t(4096)), "dtoh")
first = time.perf_counter() - t0
print("STEP2", hashlib.sha256(buf.raw).hexdigest()[:16], p.value, first, flush=True)
'''


def node_main(argv: list[str]) -> int:
    """One node server (run as a process of its own): port, park dir, spill dir, backend, idle park seconds."""
    port, park, spill, backend, idle = argv
    from fargpu.server.auth import StaticTokenAuth
    from fargpu.server.backend import select
    from fargpu.server.node_agent import AgentConfig, NodeAgent

    cfg = AgentConfig(listen=f"127.0.0.1:{port}", spill_dir=spill, park_store=park, host_pool_bytes=4 << 30,
                      idle_page_out_s=float(idle) or None, idle_park_s=float(idle) or None)

    async def run() -> None:
        agent = NodeAgent(select(backend), StaticTokenAuth(os.environ["FARGPU_TOKEN"]), cfg)
        await agent.start()
        dev = agent.devices()[0]
        print(f"NODE-READY {dev.name}|{agent.backend_info.driver_version}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await agent.stop()

    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run())
    return 0


def evict(root: Path) -> int:
    """Drops the files under root from the page cache (written back first); returns their bytes."""
    total = 0
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--node":
        return node_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stub-dir", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--backend", default="cuda", help="cuda; sim only for a dry run of this script")
    ap.add_argument("--client", default="torch", help="torch, or ctypes (a dry run without PyTorch)")
    ap.add_argument("--gib", type=float, default=2.0, help="the session's size")
    ap.add_argument("--work", default="/tmp/fargpu-park-bench")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    park, token = work / "store", "park-bench-token"
    result: dict[str, Any] = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                              "commit": os.environ.get("FARGPU_COMMIT", "unknown"), "backend": a.backend,
                              "client": a.client, "session_gib": a.gib, "ok": False}
    proof = out / "park_proof.jsonl"
    base_env = dict(os.environ, FARGPU_TOKEN=token)
    client_env = dict(base_env, LD_LIBRARY_PATH=a.stub_dir, LD_PRELOAD=f"{a.stub_dir}/libcuda.so.1",
                      FARGPU_PROOF_FILE=str(proof), CUBLAS_WORKSPACE_CONFIG=":4096:8", FARGPU_LOG="info",
                      FARGPU_RESUME_TIMEOUT_S="300")
    nodes: list[subprocess.Popen[str]] = []
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
    from park_fidelity_program import EXPECTED, PROGRAM

    def node(name: str, port: int, idle: float) -> tuple[subprocess.Popen[str], Path]:
        log = out / f"node_{name}.log"
        p = subprocess.Popen([a.python, __file__, "--node", str(port), str(park), str(work / f"spill-{name}"),
                              a.backend, str(idle)], env=base_env, stdout=subprocess.PIPE,
                             stderr=log.open("w"), text=True)
        nodes.append(p)
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if not line.startswith("NODE-READY"):
            raise RuntimeError(f"node {name} did not start: {log.read_text()[-2000:]}")
        result.setdefault("gpu", line.split(" ", 1)[1])
        return p, log

    def stop(p: subprocess.Popen[str]) -> None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    logs: dict[int, Path] = {}

    def client(port: int, name: str, code: str = "") -> subprocess.Popen[str]:
        code = code or (TORCH if a.client == "torch" else CTYPES)
        env = dict(client_env, FARGPU_SERVER=f"127.0.0.1:{port}")
        log = out / f"client_{name}.log"  # a file, not a pipe: nothing the client logs can make it wait
        p = subprocess.Popen([a.python, "-c", code, str(a.gib)], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        logs[p.pid] = log
        return p

    def line(p: subprocess.Popen[str], want: str) -> list[str]:
        assert p.stdout is not None
        got = p.stdout.readline().split()
        if not got or got[0] != want:
            raise RuntimeError(f"expected {want}, got {got}: {logs[p.pid].read_text()[-3000:]}")
        return got

    def save() -> None:  # after every step: a run cut short still leaves what it measured
        (out / "park_gpu.json").write_text(json.dumps(result, indent=2))

    try:
        # the reference (the same program, never parked) beside the run that is parked: node A parks the idle
        # session and stops; node B is started on its address
        ref_port, port = free_port(), free_port()
        ref_node, _ = node("ref", ref_port, 0)
        node_a, log_a = node("a", port, 1.0)
        r = client(ref_port, "reference")
        c = client(port, "parked")
        fid = client(port, "fidelity", PROGRAM)
        ref1 = line(r, "STEP1")
        run1 = line(c, "STEP1")
        line(fid, "READY")
        assert r.stdin is not None
        r.stdin.write("go\n")
        r.stdin.flush()
        ref2 = line(r, "STEP2")
        r.wait(120)
        stop(ref_node)
        result["reference_done"] = True
        save()
        t0 = time.monotonic()
        m = None
        sid = re.search(rf"session (\w+) for lease \S+ \(client [^)]*:{c.pid}\)", log_a.read_text())
        while time.monotonic() - t0 < 300 and m is None and sid:
            text = log_a.read_text()
            m = re.search(rf"park of session {sid.group(1)}: (parked \S+ (\d+) (\d+)|failed .*)", text)
            paging = re.findall(rf"page-out of session {sid.group(1)}: (failed .*)", text)
            if m is None and len(paging) >= 3:  # the node retries a failed page-out for ever: say why and stop
                result["pageout_error"] = paging[-1]
                raise RuntimeError(f"the session could not page out, so it cannot park: {paging[-1]}")
            time.sleep(0.2)
        if m is None or not m.group(1).startswith("parked"):
            raise RuntimeError(f"the session was not parked: {m.group(1) if m else 'no park within 300 s'}")
        while time.monotonic() - t0 < 300 and len(re.findall(r"park of session \w+: ", log_a.read_text())) < 2:
            time.sleep(0.2)  # the fidelity session's park too
        result["globals_saved"] = re.findall(r"park: (\d+) module globals \((\d+) bytes\) of (\d+) loaded images",
                                             log_a.read_text())
        result["park_bytes"], result["park_s"] = int(m.group(2)), int(m.group(3)) / 1e9
        pg = re.search(r"page-out of session \w+: paged (\w+) (\d+) (\d+)", log_a.read_text())
        if pg:
            result["pageout_to"], result["pageout_s"] = pg.group(1), int(pg.group(3)) / 1e9
        hp = re.search(r"host page pool: (\d+) MiB of pinned host memory from the driver \((\d+) slabs of (\d+) MiB\)",
                       log_a.read_text())  # else the pool is a memfd (its reason is in the node's log)
        result["host_pool_kind"] = "vmm" if hp else "memfd"
        if hp:
            result["host_pool_slabs"], result["host_pool_slab_bytes"] = int(hp.group(2)), int(hp.group(3)) << 20
        save()
        stop(node_a)
        result["node_a_exit"] = node_a.returncode
        # Another node would read the park store cold: its files leave this host's page cache first.
        result["store_cache_evicted_bytes"] = evict(park)
        node_b, log_b = node("b", port, 0)
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
        run2 = line(c, "STEP2")
        c.wait(120)
        assert fid.stdin is not None
        fid_out, _ = fid.communicate("go\n", timeout=300)
        result["fidelity"] = {"ok": fid_out.strip().startswith(EXPECTED), "result": fid_out.strip()[-400:],
                              "log": logs[fid.pid].read_text()[-1500:] if not fid_out.strip().startswith(EXPECTED)
                              else ""}
        err = logs[c.pid].read_text()
        result["resumed"] = "resumed on" in err
        result["first_call_after_park_s"] = float(run2[-1])
        result["reference_first_call_s"] = float(ref2[-1])
        text_b = log_b.read_text()
        r = re.search(r"restored a parked session: (\d+) journal entries, (\d+) allocations, (\d+) moved globals in "
                      r"([\d.]+) s", text_b)
        result["restore"] = {"journal_entries": int(r.group(1)), "allocations": int(r.group(2)),
                             "moved_globals": int(r.group(3)), "replay_s": float(r.group(4))} if r else None
        result["globals_moved"] = any(int(k) for k in re.findall(r"restored a parked session: \d+ journal entries, "
                                                                 r"\d+ allocations, (\d+) moved globals", text_b))
        pin = re.search(r"is resident again from (\w+): (\d+) (\d+)(?:.*direct=(\d))?", text_b)
        result["restore_pagein"] = {"from": pin.group(1), "bytes": int(pin.group(2)), "s": int(pin.group(3)) / 1e9,
                                    "direct_io": pin.group(4) == "1"} if pin else None
        result["moved_global_lines"] = re.findall(r"module global moved from \S+ to \S+ \(\d+ bytes\)", text_b)[:20]
        result["step1_identical"] = run1[1:2] == ref1[1:2]
        result["step2_identical"] = run2[1:-1] == ref2[1:-1]
        result["outputs"] = {"reference": [ref1[1:], ref2[1:-1]], "parked": [run1[1:], run2[1:-1]]}
        stop(node_b)
        result["ok"] = (result["resumed"] and result["step1_identical"] and result["step2_identical"]
                        and result["fidelity"]["ok"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired, AssertionError) as e:
        result["error"] = str(e)[-3000:]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    # how the restoring node got the session's addresses back (server/replay/park_place.c), or why it could not
    node_logs = "".join(f.read_text(errors="replace") for f in sorted(out.glob("node_*.log")))
    result["placement"] = re.findall(r"placed \d+ allocations at their old addresses: [^\n]*", node_logs)[:4]
    result["restore_errors"] = re.findall(r"cannot restore session \w+: [^\n]*", node_logs)[:4]
    result["randomisation_refused"] = re.findall(r"cannot turn off address randomisation[^\n]*", node_logs)[:2]
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from acceptance import check_proof
        from proof_file import read_proof

        clean, problems, notes = check_proof(proof, Path(a.stub_dir))
        result["proof"] = {"clean": clean, "clients": len(read_proof(proof)[0]), "problems": problems, "notes": notes}
    except Exception as e:  # the proof is reported, never skipped silently
        result["proof"] = {"clean": False, "problems": [f"could not check the proof: {e}"]}
    save()
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
