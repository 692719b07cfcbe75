"""Stream capture of stream-ordered allocation through the real stub and node on the simulated device (ctypes):
cuMemAllocAsync / cuMemFreeAsync on a capturing stream become graph memory nodes (server/replay/mempool_capture.c,
client_stub/graph_mem.c), as natively.

- A capture of alloc -> kernel / memset -> copy out -> free gives a graph with allocation and free nodes
  (cuGraphNodeGetType 10 and 11); instantiated, it runs twice with the right results. Its memory counts against
  the lease's quota while the graph holds it and goes back when the graph goes; an allocation over the quota
  fails at once.
- A free under capture of memory another graph allocated (launched and so left to the application) frees it when
  its graph runs (the memory goes once neither graph lives); a free under capture of memory that is no graph
  allocation is CUDA_ERROR_INVALID_VALUE, as the driver requires. A capture invalidated after an allocation
  (cuStreamEndCapture fails) gives its memory back.
- Paging and parking: graph memory is ordinary session memory, so a session holding captured graphs pages out and
  back with every byte at the same address (the graphs run again after the page-in), but parking it is refused
  with its reason (parking cannot rebuild graphs); once the graphs are gone, graph memory the application still
  holds parks and comes back with its bytes (a failed capture leaves no graph or node behind that would keep the
  session from parking)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cuda_ctypes import TYPED_PRELUDE
from e2e_helpers import start_client, start_server, stop_server, wait_log

MiB = 1 << 20
N = 1 << 16

COMMON = (
    TYPED_PRELUDE
    + r"""
N = 1 << 16
ctx0()
mod = load_test_module()
fill = V(); ok(cu.cuModuleGetFunction(ctypes.byref(fill), mod, b"fg_fill_u32"), "func")
s = V(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
def malloc_async(n):
    p = U64(); r = cu.cuMemAllocAsync(ctypes.byref(p), ctypes.c_size_t(n), s); return r, p
def launch_fill(p, val):
    a, b, c = U64(p), ctypes.c_uint32(val), U64(N)
    args = (V * 3)(ctypes.addressof(a), ctypes.addressof(b), ctypes.addressof(c))
    ok(cu.cuLaunchKernel(fill, 64, 1, 1, 128, 1, 1, 0, s, args, None), "launch")
def read(p, n=N):
    buf = (ctypes.c_uint32 * n)()
    ok(cu.cuMemcpyDtoH_v2(buf, U64(p), ctypes.c_size_t(n * 4)), "dtoh")
    return sorted(set(buf))
def end():
    g = V(); r = cu.cuStreamEndCapture(s, ctypes.byref(g)); return r, g
def inst(g):
    e = V(); ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(e), g, ctypes.c_ulonglong(0)), "instantiate"); return e
def run(e):
    ok(cu.cuGraphLaunch(e, s), "graph launch"); ok(cu.cuStreamSynchronize(s), "sync")
def gone(g, e):
    ok(cu.cuGraphExecDestroy(e), "exec destroy"); ok(cu.cuGraphDestroy(g), "graph destroy")
def charged():
    return (f0 - meminfo()[0]) >> 20
r, out = alloc(2 * N * 4); ok(r, "out")
f0 = meminfo()[0]
def capture_main():
    # alloc -> kernel / memset -> copy out -> free, all captured
    ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
    r, p = malloc_async(N * 4); ok(r, "alloc in capture")
    r, q = malloc_async(N * 4); ok(r, "alloc in capture")
    launch_fill(p.value, 7)
    ok(cu.cuMemsetD32Async(q, ctypes.c_uint(9), ctypes.c_size_t(N), s), "memset")
    ok(cu.cuMemcpyDtoDAsync_v2(U64(out), p, ctypes.c_size_t(N * 4), s), "copy out")
    ok(cu.cuMemcpyDtoDAsync_v2(U64(out + N * 4), q, ctypes.c_size_t(N * 4), s), "copy out")
    ok(cu.cuMemFreeAsync(p, s), "free in capture"); ok(cu.cuMemFreeAsync(q, s), "free in capture")
    r, g = end(); ok(r, "end capture")
    captured_ptrs[:] = [p.value, q.value]
    return g
captured_ptrs = []
def check_main(e):
    ok(cu.cuMemsetD32_v2(U64(out), ctypes.c_uint(0), ctypes.c_size_t(2 * N)), "clear")
    run(e)
    return read(out, N) + read(out + N * 4, N)
def capture_left(val):
    # an allocation the graph does not free: its launch leaves it to the application
    ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
    r, p = malloc_async(3 * MiB); ok(r, "alloc in capture")
    ok(cu.cuMemsetD32Async(p, ctypes.c_uint(val), ctypes.c_size_t(3 * MiB // 4), s), "memset")
    r, g = end(); ok(r, "end capture")
    return g, p.value
MiB = 1 << 20
"""
)

CAPTURE = (
    COMMON
    + r"""
g = capture_main()
n = ctypes.c_size_t(0); ok(cu.cuGraphGetNodes(g, None, ctypes.byref(n)), "nodes")
nodes = (V * n.value)(); ok(cu.cuGraphGetNodes(g, nodes, ctypes.byref(n)), "nodes")
types = []
for x in nodes:
    t = ctypes.c_int(); ok(cu.cuGraphNodeGetType(V(x), ctypes.byref(t)), "type"); types.append(t.value)
print("types", sorted(types))  # kernel 0, memcpy 1 1, memset 2, mem alloc 10 10, mem free 11 11
class AllocParams(ctypes.Structure):  # CUDA_MEM_ALLOC_NODE_PARAMS: poolProps (88 bytes), access, bytesize, dptr
    _fields_ = [("allocType", ctypes.c_int), ("handleTypes", ctypes.c_int), ("locType", ctypes.c_int),
                ("locId", ctypes.c_int), ("rest", ctypes.c_ubyte * 72), ("access", V), ("n_access", ctypes.c_size_t),
                ("bytesize", ctypes.c_size_t), ("dptr", U64)]
allocs, frees = [], []
for x, t in zip(nodes, types):
    if t == 10:
        ap = AllocParams(); ok(cu.cuGraphMemAllocNodeGetParams(V(x), ctypes.byref(ap)), "alloc params")
        allocs.append((ap.dptr, ap.bytesize, ap.allocType, ap.locType, ap.locId))
    if t == 11:
        fp = U64(); ok(cu.cuGraphMemFreeNodeGetParams(V(x), ctypes.byref(fp)), "free params"); frees.append(fp.value)
print("params", sorted(a[0] for a in allocs) == sorted(frees) == sorted(captured_ptrs),
      sorted(set(a[1:] for a in allocs)))
e = inst(g)
print("held", charged())  # both blocks share one 2 MiB chunk of the pool
print("launches", check_main(e), check_main(e))
gone(g, e)
print("destroyed", charged())
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
print("over quota", malloc_async(80 * MiB)[0], end()[0])
# a free under capture of another graph's allocation
ga, r_ = capture_left(5)
ea = inst(ga); run(ea)
print("left", read(r_, 3 * MiB // 4), charged())
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
ok(cu.cuMemFreeAsync(U64(r_), s), "free of another graph's allocation")
rb, gb = end(); ok(rb, "end")
eb = inst(gb)
gone(ga, ea)
print("held by the freeing graph", charged())
run(eb)
gone(gb, eb)
print("freed", charged())
# memory that is no graph allocation; a capture that fails
r, plain = alloc(MiB); ok(r, "plain")
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
bad = cu.cuMemFreeAsync(U64(plain), s)
print("plain free", bad, end()[0])
ok(cu.cuMemFree_v2(U64(plain)), "plain free")
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
r, p = malloc_async(4 * MiB); ok(r, "alloc in capture")
print("invalidated", charged(), cu.cuStreamSynchronize(s), end()[0], charged())
print("END")
"""
)


def test_captured_allocation_graphs_run_and_free(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB))
    try:
        r = subprocess.run(
            [sys.executable, "-P", "-c", CAPTURE],
            env=s.client_env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        lines = [ln.strip() for ln in r.stdout.splitlines()]
        why = f"{r.stdout}\n{r.stderr}\n{s.log_text()[-3000:]}"
        assert r.returncode == 0 and lines and lines[-1] == "END", why
        assert "types [0, 1, 1, 2, 10, 10, 11, 11]" in lines, why
        assert f"params True [({N * 4}, 1, 1, 0)]" in lines, why  # address, size, pinned device memory on device 0
        assert "held 2" in lines, why
        assert "launches [7, 9] [7, 9]" in lines, why
        assert "destroyed 0" in lines, why
        assert "over quota 2 0" in lines, why  # CUDA_ERROR_OUT_OF_MEMORY; the capture goes on
        assert "left [5] 4" in lines, why  # valid after the launch, as the application's (3 MiB: 4 charged)
        assert "held by the freeing graph 4" in lines and "freed 0" in lines, why
        assert "plain free 1 0" in lines, why  # CUDA_ERROR_INVALID_VALUE: not a graph allocation
        # 4 MiB held during the capture; the synchronisation invalidates it (900), ending it fails (901)
        assert "invalidated 4 900 901 0" in lines, why
    finally:
        stop_server(s)


HOLDS_GRAPHS = (
    COMMON
    + r"""
g = capture_main(); e = inst(g)
ga, r_ = capture_left(5); ea = inst(ga); run(ea)
print("READY", check_main(e), read(r_, 3 * MiB // 4), flush=True)
sys.stdin.readline()  # meanwhile: paged out, and refused parking
print("PAGED-IN", check_main(e), read(r_, 3 * MiB // 4), flush=True)
gone(g, e); gone(ga, ea)  # its graphs go: the next time it pages out, it parks
print("GRAPHS-GONE", flush=True)
sys.stdin.readline()  # meanwhile: paged out and parked
print("RESUMED", read(r_, 3 * MiB // 4), flush=True)
"""
)

LEFT_MEMORY = (
    COMMON
    + r"""
dflt = V(); ok(cu.cuDeviceGetDefaultMemPool(ctypes.byref(dflt), 0), "default pool")
def reserved():  # this session's (the node's quota is the lease's, which the other client shares)
    v = U64(); ok(cu.cuMemPoolGetAttribute(dflt, 5, ctypes.byref(v)), "attr"); return v.value >> 20
ga, r_ = capture_left(5); ea = inst(ga); run(ea)
gone(ga, ea)
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")  # a capture that fails: its graph, nodes and memory go
r, p = malloc_async(4 * MiB); ok(r, "alloc in capture")
print("failed capture", cu.cuStreamSynchronize(s), end()[0], flush=True)
print("READY", reserved(), flush=True)  # the graph went; the memory its launch left to the application stays
sys.stdin.readline()  # meanwhile: parked
print("RESUMED", read(r_, 3 * MiB // 4), reserved(), flush=True)
ok(cu.cuMemFree_v2(U64(r_)), "free")
print("FREED", reserved(), flush=True)
"""
)


def test_graph_memory_pages_out_and_parks_once_the_graphs_are_gone(tmp_path: Path) -> None:
    store = tmp_path / "park-store"
    s = start_server(
        tmp_path, "--vram-quota", str(64 * MiB), "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store)
    )
    env = s.client_env(FARGPU_RESUME_TIMEOUT_S="60")
    holder, left = start_client(HOLDS_GRAPHS, env), start_client(LEFT_MEMORY, env)
    try:
        assert holder.stdout is not None and left.stdout is not None
        for p, want in ((holder, "READY [7, 9] [5]"), (left, "failed capture 900 901"), (left, "READY 4")):
            got = p.stdout.readline().strip() if p.stdout else ""
            if got != want:
                p.kill()
                raise AssertionError(got + (p.stderr.read() if p.stderr else "") + s.log_text()[-3000:])
        m = wait_log(s, r"session \w+ was not parked: (unparkable: .*)")
        assert "CUDA graphs" in m.group(1), m.group(1)  # the session that holds graphs is refused, with the reason
        wait_log(s, r"park of session \w+: parked sessions/\w+ (\d+)")  # the one whose graphs went is parked
        holder.stdin.write("go\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        for want in ("PAGED-IN [7, 9] [5]", "GRAPHS-GONE"):  # paged in, its graphs run again; then they go
            got = holder.stdout.readline().strip()
            assert got == want, got + s.log_text()[-3000:]
        hid = re.search(r"session (\w+) was not parked: unparkable", s.log_text())
        assert hid is not None
        # refused once, it is tried again after it ran and paged out once more: now it parks
        wait_log(s, rf"park of session {hid.group(1)}: parked sessions/\w+ (\d+)", timeout=60)
        out, err = holder.communicate("go\n", timeout=120)
        assert "RESUMED [5]" in out, out + err + s.log_text()[-3000:]
        out, err = left.communicate("go\n", timeout=120)
        why = f"{out}\n{err}\n{s.log_text()[-3000:]}"
        assert "RESUMED [5] 4" in out and "FREED 0" in out, why
        assert "restored a parked session" in s.log_text(), why
    finally:
        for p in (holder, left):
            if p.poll() is None:
                p.kill()
        stop_server(s)
