"""Async copies between host memory and the device made on a stream under capture (client_stub/capture_copies.c):
each launch of the captured graph must read the application's host bytes as they are at cuGraphLaunch and write
its host destination, as natively, not replay the bytes of capture time. A client program captures host→device,
a kernel, device→device and device→host copies (global capture mode: the stub's shadow allocation must not
invalidate it), from page-locked and pageable host memory, small and large; launches the executable several times
with new inputs, each synchronised and checked byte for byte; captures a fork and join over two streams through
events with the host copy on the joined stream; clones, updates an executable from another captured graph, a 2D
copy with gaps in its host destination; and checks that destroying the graphs gives back every byte of device
memory the captures took. The same program runs on the simulated device directly (where graph nodes read host
memory at launch, as a GPU's do) and through fargpu over TCP, the unix socket and shared memory; the printed
results must be the expected values and equal. The simulated device itself is checked to refuse cuMemAlloc_v2
under a global-mode capture (invalidating it) and to allow it in relaxed mode, as the driver does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE, SIM_DIRECT
from e2e_helpers import NodeServer, start_server, stop_server

from fargpu import paths

PROGRAM = PRELUDE + r'''
import array, json, os, random
V, U64 = ctypes.c_void_p, ctypes.c_uint64
SIZE, PINNED, TWO_D = int(os.environ["SIZE"]), os.environ["MEM"] == "pinned", os.environ.get("TWO_D") == "1"
N = SIZE // 4
ctx0()
mod = load_test_module()
scale = V(); ok(cu.cuModuleGetFunction(ctypes.byref(scale), mod, b"fg_scale"), "function")
s, s2 = V(), V()
ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream"); ok(cu.cuStreamCreate(ctypes.byref(s2), 1), "stream 2")
fork, join = V(), V()
ok(cu.cuEventCreate(ctypes.byref(fork), 2), "event"); ok(cu.cuEventCreate(ctypes.byref(join), 2), "event")
r, d = alloc(SIZE); ok(r, "alloc")
r, d2 = alloc(SIZE); ok(r, "alloc 2")
def host(n):
    if PINNED:
        p = V(); ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(n)), "allochost"); return p.value
    b = ctypes.create_string_buffer(n); host.keep.append(b); return ctypes.addressof(b)
host.keep = []
hin, hout = host(SIZE), host(SIZE)
rng = random.Random(SIZE + PINNED)
out = {"rounds": []}

def launch_scale(ptr, factor, stream):
    x, f, n = U64(ptr), ctypes.c_float(factor), ctypes.c_int(N)
    params = (V * 3)(*(ctypes.cast(ctypes.byref(a), V) for a in (x, f, n)))
    ok(cu.cuLaunchKernel(scale, (N + 255) // 256, 1, 1, 256, 1, 1, 0, stream, params, None), "kernel")

def capture(factor, forked=False):
    """hin -> d, d *= factor, d -> d2, d2 -> hout; forked: the host copy and kernel on s2, joined by events."""
    ok(cu.cuStreamBeginCapture_v2(s, 0), "begin (global mode)")
    on = s
    if forked:
        ok(cu.cuEventRecord(fork, s), "record fork"); ok(cu.cuStreamWaitEvent(s2, fork, 0), "wait fork"); on = s2
    ok(cu.cuMemcpyHtoDAsync_v2(U64(d), V(hin), ctypes.c_size_t(SIZE), on), "captured htod")
    launch_scale(d, factor, on)
    if forked:
        ok(cu.cuEventRecord(join, s2), "record join"); ok(cu.cuStreamWaitEvent(s, join, 0), "wait join")
    ok(cu.cuMemcpyDtoDAsync_v2(U64(d2), U64(d), ctypes.c_size_t(SIZE), s), "captured dtod")
    ok(cu.cuMemcpyDtoHAsync_v2(V(hout), U64(d2), ctypes.c_size_t(SIZE), s), "captured dtoh")
    g = V(); r = cu.cuStreamEndCapture(s, ctypes.byref(g))
    out.setdefault("end", []).append(r)
    ok(r, "end capture")
    return g

def instantiate(g):
    e = V(); ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(e), g, U64(0)), "instantiate"); return e

def run(e, factor, what):
    vals = array.array("f", (float(rng.randrange(0, 1 << 20)) for _ in range(N)))
    ctypes.memmove(hin, vals.tobytes(), SIZE)
    ctypes.memset(hout, 0, SIZE)
    ok(cu.cuGraphLaunch(e, s), "launch " + what); ok(cu.cuStreamSynchronize(s), "sync " + what)
    want = array.array("f", (v * factor for v in vals)).tobytes()
    out["rounds"].append([what, ctypes.string_at(hout, SIZE) == want])

ok(cu.cuCtxSynchronize(), "sync before")
free0 = meminfo()[0]
g = capture(3.0)
e = instantiate(g)
for i in range(3):
    run(e, 3.0, f"plain {i}")
gf = capture(5.0, forked=True)
ef = instantiate(gf)
for i in range(2):
    run(ef, 5.0, f"fork/join {i}")
gc = V(); ok(cu.cuGraphClone(ctypes.byref(gc), g), "clone")
ok(cu.cuGraphDestroy(g), "destroy the cloned graph")
ec = instantiate(gc)
run(ec, 3.0, "clone")
run(e, 3.0, "executable of a destroyed graph")
g7 = capture(7.0)
info = (ctypes.c_ubyte * 64)()
r = cu.cuGraphExecUpdate_v2(e, g7, info)
out["update"] = [r, info[0]]
ok(cu.cuGraphDestroy(g7), "destroy the update's graph")
run(e, 7.0, "updated executable")
if TWO_D:  # 2D: rows of W bytes at pitch P; the host destination's gaps keep their bytes
    W, P, H = 100, 128, 64
    src, dst = host(P * H), host(P * H)
    class M2D(ctypes.Structure):
        _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int),
                    ("srcHost", V), ("srcDevice", U64), ("srcArray", V), ("srcPitch", ctypes.c_size_t),
                    ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int),
                    ("dstHost", V), ("dstDevice", U64), ("dstArray", V), ("dstPitch", ctypes.c_size_t),
                    ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t)]
    up = M2D(srcMemoryType=1, srcHost=src, srcPitch=P, dstMemoryType=2, dstDevice=d, dstPitch=W, WidthInBytes=W,
             Height=H)
    down = M2D(srcMemoryType=2, srcDevice=d, srcPitch=W, dstMemoryType=1, dstHost=dst, dstPitch=P, WidthInBytes=W,
               Height=H)
    ok(cu.cuStreamBeginCapture_v2(s, 0), "begin 2d")
    ok(cu.cuMemcpy2DAsync_v2(ctypes.byref(up), s), "captured 2d htod")
    ok(cu.cuMemcpy2DAsync_v2(ctypes.byref(down), s), "captured 2d dtoh")
    g2 = V(); ok(cu.cuStreamEndCapture(s, ctypes.byref(g2)), "end 2d")
    e2 = instantiate(g2)
    good = True
    for i in range(2):
        a, b = rng.randbytes(P * H), rng.randbytes(P * H)
        ctypes.memmove(src, a, P * H); ctypes.memmove(dst, b, P * H)
        ok(cu.cuGraphLaunch(e2, s), "launch 2d"); ok(cu.cuStreamSynchronize(s), "sync 2d")
        got = ctypes.string_at(dst, P * H)
        for y in range(H):
            row, gap = slice(y * P, y * P + W), slice(y * P + W, (y + 1) * P)
            good &= got[row] == a[row] and got[gap] == b[gap]
    out["two_d"] = good
    ok(cu.cuGraphExecDestroy(e2), "exec destroy 2d"); ok(cu.cuGraphDestroy(g2), "destroy 2d")
for x in (e, ef, ec):
    ok(cu.cuGraphExecDestroy(x), "exec destroy")
ok(cu.cuGraphDestroy(gf), "destroy"); ok(cu.cuGraphDestroy(gc), "destroy")
ok(cu.cuCtxSynchronize(), "sync after")
out["memory_back"] = meminfo()[0] == free0
print("RESULT " + json.dumps(out))
'''


def run_program(env: dict[str, str], size: int, mem: str, two_d: bool) -> dict[str, object]:
    env = dict(env, SIZE=str(size), MEM=mem, TWO_D="1" if two_d else "0")
    res = subprocess.run([sys.executable, "-P", "-c", PROGRAM], env=env, capture_output=True, text=True,
                         timeout=240, cwd="/")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    got: dict[str, object] = json.loads(lines[-1][len("RESULT "):])
    return got


def expected(two_d: bool) -> dict[str, object]:
    rounds = [[f"plain {i}", True] for i in range(3)] + [[f"fork/join {i}", True] for i in range(2)]
    rounds += [["clone", True], ["executable of a destroyed graph", True], ["updated executable", True]]
    out: dict[str, object] = {"rounds": rounds, "end": [0, 0, 0], "update": [0, 0], "memory_back": True}
    if two_d:
        out["two_d"] = True
    return out


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    sock = Path("/tmp") / f"fargpu-capcopies-{os.getpid()}.sock"
    s = start_server(tmp_path_factory.mktemp("capture_copies"), "--unix", str(sock))
    s.unix = str(sock)  # type: ignore[attr-defined]
    yield s
    stop_server(s)


SIZES = {"small": 64 * 1024, "large": 4 << 20}


@pytest.mark.parametrize("mem", ["pinned", "pageable"])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_captured_copies_on_the_simulated_device_directly(tmp_path: Path, size: str, mem: str) -> None:
    """The reference: the simulated device loaded as libcuda, no fargpu (its graph nodes copy from and to the host
    memory they name at each launch)."""
    env = dict(os.environ)
    env.pop("FARGPU_SERVER", None)
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(paths.sim_lib(), lib / "libcuda.so.1")
    env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    assert run_program(env, SIZES[size], mem, False) == expected(False)


TRANSPORTS = {"tcp": {"FARGPU_STREAMS": "4"}, "unix": {"FARGPU_SHM_MB": "0"}, "shm": {}}


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("mem", ["pinned", "pageable"])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_captured_host_copies_move_the_applications_bytes_at_each_launch(node: NodeServer, transport: str, mem: str,
                                                                         size: str) -> None:
    env = node.client_env(**TRANSPORTS[transport])
    if transport != "tcp":
        env["FARGPU_SERVER"] = node.unix  # type: ignore[attr-defined]
    before = len(node.log_text())
    got = run_program(env, SIZES[size], mem, True)
    assert got == expected(True), got
    assert "stream capture was invalidated" not in node.log_text()[before:], node.log_text()[before:][-3000:]


SIM_ALLOC = SIM_DIRECT + r'''
out = {}
def attempt(capture_mode, thread_mode):
    ok(cu.cuStreamBeginCapture_v2(s, capture_mode), "begin")
    m = ctypes.c_int(thread_mode); ok(cu.cuThreadExchangeStreamCaptureMode(ctypes.byref(m)), "exchange")
    p = U64(); r = cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 20))
    ok(cu.cuThreadExchangeStreamCaptureMode(ctypes.byref(m)), "exchange back")
    st = ctypes.c_int(-1); ok(cu.cuStreamIsCapturing(s, ctypes.byref(st)), "is capturing")
    g = V(); end = cu.cuStreamEndCapture(s, ctypes.byref(g))
    if g.value: cu.cuGraphDestroy(g)
    if p.value: cu.cuMemFree_v2(p)
    return [r, st.value, end]
out["global capture, global thread"] = attempt(0, 0)
out["global capture, relaxed thread"] = attempt(0, 2)
out["thread-local capture, thread-local thread"] = attempt(1, 1)
out["relaxed capture, global thread"] = attempt(2, 0)
print(json.dumps(out))
'''


def test_the_simulated_device_refuses_an_allocation_that_a_capture_mode_forbids() -> None:
    res = subprocess.run([sys.executable, "-P", "-c", SIM_ALLOC, str(paths.sim_lib())], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ))
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    unsupported, invalidated = 900, 901  # CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, _INVALIDATED
    assert got == {
        "global capture, global thread": [unsupported, 2, invalidated],  # status 2: invalidated
        "global capture, relaxed thread": [0, 1, 0],
        "thread-local capture, thread-local thread": [unsupported, 2, invalidated],
        "relaxed capture, global thread": [0, 1, 0],
    }, got


# Captures that end without a graph give their shadows back: one invalidated (a synchronisation on the capturing
# stream), one whose stream is destroyed mid-capture (found when the next capture copies); both checked against the
# device's free memory before them, and the shadows are seen to exist while the captures run.
ENDINGS = PRELUDE + r'''
import json
V, U64 = ctypes.c_void_p, ctypes.c_uint64
SIZE = 4 << 20
ctx0()
s, s3 = V(), V()
ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream"); ok(cu.cuStreamCreate(ctypes.byref(s3), 1), "stream 3")
r, d = alloc(SIZE); ok(r, "alloc")
buf = ctypes.create_string_buffer(SIZE)
out = {}
def copies(st):
    ok(cu.cuMemcpyHtoDAsync_v2(U64(d), buf, ctypes.c_size_t(SIZE), st), "captured htod")
    ok(cu.cuMemcpyDtoHAsync_v2(buf, U64(d), ctypes.c_size_t(SIZE), st), "captured dtoh")
ok(cu.cuCtxSynchronize(), "sync")
free0 = meminfo()[0]
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin")
copies(s)
out["shadows while capturing"] = free0 - meminfo()[0] >= 2 * SIZE
out["sync invalidates"] = cu.cuStreamSynchronize(s) != 0
g = V(); out["end fails"] = cu.cuStreamEndCapture(s, ctypes.byref(g)) != 0 and not g.value
out["invalidated capture gave its shadows back"] = meminfo()[0] == free0
ok(cu.cuStreamBeginCapture_v2(s3, 2), "begin on s3")
copies(s3)
ok(cu.cuStreamDestroy_v2(s3), "destroy s3 mid-capture")
ok(cu.cuStreamBeginCapture_v2(s, 0), "begin again")
copies(s)
g = V(); ok(cu.cuStreamEndCapture(s, ctypes.byref(g)), "end")
out["the destroyed stream's capture gave its shadows back"] = free0 - meminfo()[0] == 2 * SIZE  # the graph's own
ok(cu.cuGraphDestroy(g), "destroy graph")
ok(cu.cuCtxSynchronize(), "sync")
out["the graph gave its shadows back"] = meminfo()[0] == free0
print("RESULT " + json.dumps(out))
'''


def test_captures_without_a_graph_give_their_shadows_back(node: NodeServer) -> None:
    before = len(node.log_text())
    res = subprocess.run([sys.executable, "-P", "-c", ENDINGS], env=node.client_env(), capture_output=True, text=True,
                         timeout=120, cwd="/")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert got == dict.fromkeys(got, True) and len(got) == 6, got
    # the worker's capture watch (server/replay/capture_watch.c) names the call that invalidated the capture
    log = node.log_text()[before:]
    assert "a stream capture was invalidated by cuStreamSynchronize" in log, log[-3000:]
    assert "found invalidated before" not in log, log[-3000:]  # not between calls: the call itself did it


# Capture into the application's graph (cuStreamBeginCaptureToGraph) after a node made by hand: the shadows are the
# application graph's, launches move the host bytes, and destroying that graph gives them back.
TO_GRAPH = PRELUDE + r'''
import json
V, U64 = ctypes.c_void_p, ctypes.c_uint64
SIZE = 1 << 20
ctx0()
s = V(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
r, d = alloc(SIZE); ok(r, "alloc")
src, dst = ctypes.create_string_buffer(SIZE), ctypes.create_string_buffer(SIZE)
ok(cu.cuCtxSynchronize(), "sync")
free0 = meminfo()[0]
g = V(); ok(cu.cuGraphCreate(ctypes.byref(g), 0), "graph")
first = V(); ok(cu.cuGraphAddEmptyNode(ctypes.byref(first), g, None, ctypes.c_size_t(0)), "empty node")
ok(cu.cuStreamBeginCaptureToGraph(s, g, (V * 1)(first), None, ctypes.c_size_t(1), 0), "begin into the graph")
ok(cu.cuMemcpyHtoDAsync_v2(U64(d), src, ctypes.c_size_t(SIZE), s), "captured htod")
ok(cu.cuMemcpyDtoHAsync_v2(dst, U64(d), ctypes.c_size_t(SIZE), s), "captured dtoh")
g2 = V(); ok(cu.cuStreamEndCapture(s, ctypes.byref(g2)), "end")
out = {"same graph": g2.value == g.value}
e = V(); ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(e), g, U64(0)), "instantiate")
for i in range(3):
    want = bytes([(i * 37 + k) % 251 for k in range(256)]) * (SIZE // 256)
    ctypes.memmove(src, want, SIZE); ctypes.memset(dst, 0, SIZE)
    ok(cu.cuGraphLaunch(e, s), "launch"); ok(cu.cuStreamSynchronize(s), "sync")
    out[f"launch {i}"] = dst.raw == want
ok(cu.cuGraphExecDestroy(e), "exec destroy"); ok(cu.cuGraphDestroy(g), "destroy")
ok(cu.cuCtxSynchronize(), "sync")
out["memory back"] = meminfo()[0] == free0
print("RESULT " + json.dumps(out))
'''


def test_capture_into_the_applications_graph(node: NodeServer) -> None:
    res = subprocess.run([sys.executable, "-P", "-c", TO_GRAPH], env=node.client_env(), capture_output=True, text=True,
                         timeout=120, cwd="/")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert got == dict.fromkeys(got, True) and len(got) == 5, got
