"""Async device→host copies into page-locked memory from a remote client (issue 13): the worker stages them in stream
order, and the reply that delivers them names each copy of 256 KiB or more with FG_LATER_BULK and sends its bytes
right after the frame, in 2 MiB pieces striped over the session's connections (protocol/SPEC.md, "Replies"), instead
of inside the frame. Over TCP with one and four streams and over the unix socket without shared memory, against the
bytes written on the simulated device: sizes straddling the 256 KiB threshold, the 2 MiB pieces, the worker's 16-slot
ring and the stub's 32 MiB chunks, every kind of page-locked memory, several copies on several streams delivered by
one reply, a failed copy among them, and concurrent streams on several threads; the bytes are there at every
synchronising call that covers the copy (event and stream synchronisation, a query that reports completion, a
context synchronisation, a host function after it on its stream) and not before the stream reached the copy; the
stub's counters and the worker's log show the bytes took the bulk path (and the data connections, with four streams);
a client killed mid-delivery leaves nothing behind. (The simulated device is a test double; no GPU claim rests on
these.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client, start_server, stop_server, wait_process_gone

P = PRELUDE + "MiB = 1 << 20\n"

MiB = 1 << 20
TRANSPORTS = {
    "tcp1": {"FARGPU_STREAMS": "1"},
    "tcp4": {"FARGPU_STREAMS": "4"},
    "unix": {"FARGPU_SHM_MB": "0"},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    sock = Path("/tmp") / f"fargpu-dtoh-bulk-{os.getpid()}.sock"
    s = start_server(tmp_path_factory.mktemp("dtoh_bulk"), "--unix", str(sock))
    s.unix = str(sock)  # type: ignore[attr-defined]
    yield s
    stop_server(s)


def env_for(node: NodeServer, transport: str, **extra: str) -> dict[str, str]:
    env = dict(TRANSPORTS[transport], FARGPU_STATS="1", **extra)
    if transport == "unix":
        env["FARGPU_SERVER"] = node.unix  # type: ignore[attr-defined]
    return node.client_env(**env)


def delivered(stderr: str) -> tuple[int, int, int]:
    """The stub's count of copies delivered over the bulk path: (copies, bytes, bytes on data connections)."""
    m = re.search(r"delivered over the bulk path: (\d+) \((\d+) bytes, (\d+) of them on data connections\)", stderr)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def sent(stderr: str, op: str) -> int:
    m = re.search(rf"^\s+{op}\s+\w+\s+sent\s+(\d+)", stderr, re.M)
    return int(m.group(1)) if m else 0


COPIES = P + r'''
import random, os
ctx0()
rng = random.Random(int(os.environ["SEED"]))
K = 256 * 1024
sizes = [K - 1, K, K + 1, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 6 * MiB + 3, 32 * MiB - 1, 32 * MiB + 5, 40 * MiB + 7]
CAP = 48 * MiB
r, dev = alloc(CAP); ok(r, "alloc")
# the three kinds of page-locked memory: cuMemAllocHost, cuMemHostAlloc, caller memory cuMemHostRegister'ed
pins = []
p = ctypes.c_void_p()
ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(CAP)), "allochost"); pins.append(p.value)
p = ctypes.c_void_p()
ok(cu.cuMemHostAlloc(ctypes.byref(p), ctypes.c_size_t(CAP), 1), "hostalloc"); pins.append(p.value)
reg = ctypes.create_string_buffer(CAP)
ok(cu.cuMemHostRegister_v2(reg, ctypes.c_size_t(CAP), 0), "register"); pins.append(ctypes.addressof(reg))
streams = []
for i in range(3):
    s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream"); streams.append(s)
def fill(n):
    off = rng.randrange(0, 4096) if n + 4096 <= CAP else 0
    data = rng.randbytes(n)
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev + off), data, ctypes.c_size_t(n)), "htod")
    return off, data
checks, bad = 0, []
# 1. one copy at a time, each size into each kind of page-locked memory, then its stream synchronised
for n in sizes:
    for k, pin in enumerate(pins):
        off, data = fill(n)
        ctypes.memset(pin, 0xA5, n)
        s = streams[k]
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin), ctypes.c_uint64(dev + off), ctypes.c_size_t(n), s), "dtoh")
        ok(cu.cuStreamSynchronize(s), "sync")
        if ctypes.string_at(pin, n) != data: bad.append(("one", n, k))
        checks += 1
# 2. several copies pending on several streams, small and large, one reply delivers them all (in id order)
spans, at = [], 0
ref = rng.randbytes(CAP)
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), ref, ctypes.c_size_t(CAP)), "htod all")
for i, n in enumerate([300 * 1024, 100, 3 * MiB + 1, K - 1, 5 * MiB, K, 2 * MiB + 9, 7 * MiB]):
    src = rng.randrange(0, CAP - n)
    ctypes.memset(pins[0] + at, 0, n)
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pins[0] + at), ctypes.c_uint64(dev + src), ctypes.c_size_t(n),
                               streams[i % 3]), "dtoh many")
    spans.append((at, src, n)); at += n + 13
ok(cu.cuCtxSynchronize(), "ctx sync")
for at, src, n in spans:
    if ctypes.string_at(pins[0] + at, n) != ref[src:src + n]: bad.append(("many", at, n))
    checks += 1
# 3. a copy that fails (a range past the allocation) among good ones: its error comes at the synchronisation, it
# writes nothing, the others arrive, and the next copy works
ctypes.memset(pins[1], 0x11, 4 * MiB); ctypes.memset(pins[2], 0, 3 * MiB)
ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pins[2]), ctypes.c_uint64(dev), ctypes.c_size_t(3 * MiB), streams[0]),
   "good")
r1 = cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pins[1]), ctypes.c_uint64(dev + CAP - MiB), ctypes.c_size_t(4 * MiB),
                             streams[0])
r2 = cu.cuStreamSynchronize(streams[0])
untouched = ctypes.string_at(pins[1], 4 * MiB) == b"\x11" * (4 * MiB)
print("FAILED", r1, r2, untouched, ctypes.string_at(pins[2], 3 * MiB) == ref[:3 * MiB])
ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pins[1]), ctypes.c_uint64(dev), ctypes.c_size_t(4 * MiB), streams[0]),
   "after")
ok(cu.cuStreamSynchronize(streams[0]), "sync after")
if ctypes.string_at(pins[1], 4 * MiB) != ref[:4 * MiB]: bad.append(("after", 4 * MiB))
print("CHECKS", checks, "BAD", bad)
'''

# what the program moves from 256 KiB on: part 1 (three copies of each size), part 2, part 3 (the good copies)
LARGE = 3 * sum(n for n in [256 * 1024, 256 * 1024 + 1, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 6 * MiB + 3,
                            32 * MiB - 1, 32 * MiB + 5, 40 * MiB + 7])
LARGE += 300 * 1024 + 3 * MiB + 1 + 5 * MiB + 256 * 1024 + 2 * MiB + 9 + 7 * MiB + 3 * MiB + 4 * MiB


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_async_copies_into_page_locked_memory_take_the_bulk_path_byte_exact(node: NodeServer, transport: str) -> None:
    before = node.log_text()
    res = run_client(COPIES, env_for(node, transport, SEED=str(len(transport) + 7)), timeout=240)
    out = res.stdout + res.stderr[-3000:]
    assert res.returncode == 0 and "CHECKS 38 BAD []" in res.stdout, out
    # CUDA_ERROR_INVALID_VALUE at the synchronisation, not at the call; nothing of it written; the good copy there
    assert "FAILED 0 1 True True" in res.stdout, out
    copies, nbytes, on_data = delivered(res.stderr)
    # Every copy from 256 KiB on (a 32 MiB + 5 copy is two records: 32 MiB and 5 bytes, the latter inline) came
    # over the bulk path; the pageable-memory path (FG_BULK_DTOH, a synchronous call) was never taken.
    assert nbytes == LARGE - 3 * 5, (nbytes, LARGE, out)
    assert copies >= 30, out
    assert sent(res.stderr, "FG_BULK_DTOH") == 0 and sent(res.stderr, "cuMemcpyDtoHAsync_v2") > 30, res.stderr
    if transport == "tcp4":
        assert on_data > nbytes // 2, (on_data, nbytes)  # three of every four pieces, about
    else:
        assert on_data == 0, on_data
    deadline = time.monotonic() + 10
    while "were delivered over the bulk path" not in node.log_text()[len(before):] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(rf"\d+ async device-to-host copies \({nbytes} bytes\) were delivered over the bulk path",
                     node.log_text()[len(before):]), node.log_text()[len(before):][-3000:]


SMALL_ONLY = P + r'''
ctx0()
n = 256 * 1024 - 1
r, dev = alloc(n); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(dev), ctypes.c_ubyte(0x3c), ctypes.c_size_t(n)), "memset")
p = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(n)), "allochost")
for i in range(4):
    ok(cu.cuMemcpyDtoHAsync_v2(p, ctypes.c_uint64(dev), ctypes.c_size_t(n), None), "dtoh")
ok(cu.cuCtxSynchronize(), "sync")
print("SAME", ctypes.string_at(p, n) == b"\x3c" * n)
'''


def test_copies_under_256_kib_stay_inline(node: NodeServer) -> None:
    res = run_client(SMALL_ONLY, env_for(node, "tcp4"))
    assert "SAME True" in res.stdout, res.stdout + res.stderr[-3000:]
    assert delivered(res.stderr) == (0, 0, 0), res.stderr


CONCURRENT = P + r'''
import random, threading
ctx = ctx0()
errors = []
def worker(t):
    ok(cu.cuCtxSetCurrent(ctx), "cur")
    rng = random.Random(t)
    s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
    r, dev = alloc(12 * MiB); ok(r, "alloc")
    pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(12 * MiB)), "allochost")
    for i in range(6):
        n = rng.choice([300 * 1024, 2 * MiB + 11, 5 * MiB + 3, 11 * MiB])
        data = rng.randbytes(n)
        ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(dev), data, ctypes.c_size_t(n), s), "htod")
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value), ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh")
        ok(cu.cuStreamSynchronize(s), "sync")
        if ctypes.string_at(pin.value, n) != data:
            errors.append((t, i, n))
threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("ERRORS", errors)
'''


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_concurrent_streams_on_several_threads(node: NodeServer, transport: str) -> None:
    res = run_client(CONCURRENT, env_for(node, transport), timeout=180)
    assert res.returncode == 0 and "ERRORS []" in res.stdout, res.stdout + res.stderr[-3000:]
    assert delivered(res.stderr)[0] >= 24, res.stderr[-3000:]


# Each way an application may learn that the copy is done finds its bytes there; before the stream reaches the copy
# (a host function ahead of it still runs) its buffer is untouched and the call has returned.
READY = P + r'''
import threading
ctx0()
n = 9 * MiB + 77
r, dev = alloc(n); ok(r, "alloc")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
p = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(n)), "allochost")
ev = ctypes.c_void_p(); ok(cu.cuEventCreate(ctypes.byref(ev), 0), "event")
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
release, results = threading.Event(), []
def blocker(_):
    release.wait(30)
def reader(_):  # a host function after the copy on its stream sees its bytes
    results.append(("hostfn", ctypes.string_at(p, n) == bytes([7]) * n))
fb, fr = HOSTFN(blocker), HOSTFN(reader)
def fresh(v):
    ok(cu.cuMemsetD8_v2(ctypes.c_uint64(dev), ctypes.c_ubyte(v), ctypes.c_size_t(n)), "memset")
    ctypes.memset(p, 0, n)
def copy():
    ok(cu.cuMemcpyDtoHAsync_v2(p, ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh")
def seen(v):
    return ctypes.string_at(p, n) == bytes([v]) * n
fresh(1); ok(cu.cuLaunchHostFunc(s, fb, None), "blocker"); copy()
results.append(("returned before the stream reached it", ctypes.string_at(p, n) == bytes(n)))
release.set()
ok(cu.cuEventRecord(ev, s), "record"); ok(cu.cuEventSynchronize(ev), "event sync")
results.append(("eventsync", seen(1)))
fresh(2); copy(); ok(cu.cuEventRecord(ev, s), "record")
while cu.cuEventQuery(ev) != 0: pass
results.append(("eventquery", seen(2)))
fresh(3); copy()
while cu.cuStreamQuery(s) != 0: pass
results.append(("streamquery", seen(3)))
fresh(4); copy(); ok(cu.cuCtxSynchronize(), "ctx sync"); results.append(("ctxsync", seen(4)))
fresh(5); copy(); ok(cu.cuStreamSynchronize(s), "stream sync"); results.append(("streamsync", seen(5)))
fresh(6); copy()  # a synchronous call that implies it: a synchronous copy on the legacy stream
out = ctypes.create_string_buffer(16)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(dev), ctypes.c_size_t(16)), "sync dtoh")
results.append(("sync call", seen(6)))
fresh(7); copy(); ok(cu.cuLaunchHostFunc(s, fr, None), "reader"); ok(cu.cuStreamSynchronize(s), "sync")
print("RESULTS", results)
'''


@pytest.mark.parametrize("transport", ["tcp4", "unix"])
def test_the_bytes_are_there_at_every_synchronising_call(node: NodeServer, transport: str) -> None:
    res = run_client(READY, env_for(node, transport), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    m = re.search(r"RESULTS (.*)", res.stdout)
    assert m, res.stdout + res.stderr[-3000:]
    results = eval(m.group(1))  # a list of (name, bool) the program printed
    assert [name for name, _ in results] == ["returned before the stream reached it", "eventsync", "eventquery",
                                             "streamquery", "ctxsync", "streamsync", "sync call", "hostfn"], results
    assert all(good for _, good in results), results
    # six of the seven copies came over the bulk path (the one before the host function came with its RUN message)
    assert delivered(res.stderr)[0] == 6, res.stderr[-3000:]


@pytest.mark.parametrize("transport", ["tcp4", "unix"])
def test_a_client_killed_mid_delivery_leaks_nothing(node: NodeServer, transport: str) -> None:
    """Killed while 48 MiB async copies into page-locked memory are delivered over and over: its worker (holding the
    staged copies, the data connections and the device memory) exits, and the node serves the next client."""
    code = P + r'''
ctx0()
n = 48 << 20
r, dev = alloc(n); ok(r, "alloc")
p = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(n)), "allochost")
print("GO", flush=True)
while True:
    ok(cu.cuMemcpyDtoHAsync_v2(p, ctypes.c_uint64(dev), ctypes.c_size_t(n), None), "dtoh")
    ok(cu.cuCtxSynchronize(), "sync")
'''
    before = node.log_text()
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], env=env_for(node, transport), stdout=subprocess.PIPE,
                            text=True, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
    time.sleep(0.5)
    new = node.log_text()[len(before):]
    pid = int(re.findall(r"-> worker (\d+)", new)[-1])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_process_gone(pid, "the worker outlived its client killed mid-delivery")
    res = run_client(READY, env_for(node, transport), timeout=120)
    assert "RESULTS" in res.stdout and "False" not in res.stdout, res.stdout + res.stderr[-3000:]


REGISTERED = P + r'''
import random
ctx0()
rng = random.Random(11)
n_max = 9 * MiB
r, dev = alloc(n_max); ok(r, "alloc")
reg = ctypes.create_string_buffer(n_max)
ok(cu.cuMemHostRegister_v2(reg, ctypes.c_size_t(n_max), 0), "register")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
bad = []
for n in [256 * 1024, 3 * MiB + 3, 9 * MiB]:
    data = rng.randbytes(n)
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), data, ctypes.c_size_t(n)), "htod")
    ctypes.memset(reg, 0, n)
    ok(cu.cuMemcpyDtoHAsync_v2(reg, ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh")
    ok(cu.cuStreamSynchronize(s), "sync")  # a small synchronous call: the doorbell's mailbox brings the reply
    if reg.raw[:n] != data: bad.append(n)
print("BAD", bad)
'''


def test_registered_memory_outside_the_shared_region_after_a_doorbell_reply(node: NodeServer) -> None:
    """Co-located with a shared-memory region, memory the application registered itself is not in the region: its
    async copies are staged and delivered like a remote client's: the reply through the doorbell's mailbox (when the
    worker is spinning on it) or the socket, and the bytes after it over the unix socket either way."""
    env = node.client_env(FARGPU_SERVER=node.unix, FARGPU_SHM_MB="64", FARGPU_STATS="1")  # type: ignore[attr-defined]
    res = run_client(REGISTERED, env, timeout=120)
    assert res.returncode == 0 and "BAD []" in res.stdout, res.stdout + res.stderr[-3000:]
    assert delivered(res.stderr)[:2] == (3, 256 * 1024 + 3 * MiB + 3 + 9 * MiB), res.stderr[-3000:]


GIVEN_BACK = P + r'''
ctx0()
n = 6 * MiB + 1
r, dev = alloc(n); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(dev), ctypes.c_ubyte(0x2b), ctypes.c_size_t(n)), "memset")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
# freed before any synchronisation: the copy lands before the block goes, never in what takes its place
a = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(a), ctypes.c_size_t(n)), "allochost")
ok(cu.cuMemcpyDtoHAsync_v2(a, ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh")
ok(cu.cuMemFreeHost(a), "freehost")
b = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(b), ctypes.c_size_t(n)), "allochost again")
ctypes.memset(b, 0x77, n)
ok(cu.cuCtxSynchronize(), "sync after free")
print("FREED", ctypes.string_at(b, n) == b"\x77" * n)
# unregistered before any synchronisation: the bytes are there when the call returns, and nothing writes later
reg = ctypes.create_string_buffer(n)
ok(cu.cuMemHostRegister_v2(reg, ctypes.c_size_t(n), 0), "register")
ok(cu.cuMemcpyDtoHAsync_v2(reg, ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh")
ok(cu.cuMemHostUnregister(reg), "unregister")
there = reg.raw[:n] == b"\x2b" * n
ctypes.memset(reg, 0x55, n)
ok(cu.cuCtxSynchronize(), "sync after unregister")
print("UNREGISTERED", there, reg.raw[:n] == b"\x55" * n)
'''


@pytest.mark.parametrize("transport", ["tcp4", "unix"])
def test_page_locked_memory_given_back_gets_its_copies_first(node: NodeServer, transport: str) -> None:
    """cuMemFreeHost and cuMemHostUnregister synchronise, as the driver's do, when a copy into that memory still
    awaits delivery: no reply writes into memory the application gave back."""
    res = run_client(GIVEN_BACK, env_for(node, transport), timeout=120)
    out = res.stdout + res.stderr[-3000:]
    assert res.returncode == 0 and "FREED True" in res.stdout and "UNREGISTERED True True" in res.stdout, out
    assert delivered(res.stderr)[0] == 2, out


TWO_D = P + r'''
import random
class M2D(ctypes.Structure):
    _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int),
                ("srcHost", ctypes.c_void_p), ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p),
                ("srcPitch", ctypes.c_size_t), ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t),
                ("dstMemoryType", ctypes.c_int), ("dstHost", ctypes.c_void_p), ("dstDevice", ctypes.c_uint64),
                ("dstArray", ctypes.c_void_p), ("dstPitch", ctypes.c_size_t), ("WidthInBytes", ctypes.c_size_t),
                ("Height", ctypes.c_size_t)]
ctx0()
W, H, DP, HP = 300 * 1024 + 3, 5, 320 * 1024, 310 * 1024  # rows of 300 KiB + 3: each one over the bulk path
ref = random.Random(3).randbytes(DP * H)
r, dev = alloc(DP * H); ok(r, "alloc")
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), ref, ctypes.c_size_t(DP * H)), "htod")
p = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(HP * H)), "allochost")
ctypes.memset(p, 0, HP * H)
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
c = M2D(srcXInBytes=7, srcMemoryType=2, srcDevice=dev, srcPitch=DP, dstXInBytes=11, dstMemoryType=1, dstHost=p.value,
        dstPitch=HP, WidthInBytes=W, Height=H)
ok(cu.cuMemcpy2DAsync_v2(ctypes.byref(c), s), "dtoh 2d async")
ok(cu.cuStreamSynchronize(s), "sync")
got = ctypes.string_at(p, HP * H)
print("ROWS", all(got[y * HP + 11:y * HP + 11 + W] == ref[y * DP + 7:y * DP + 7 + W] for y in range(H)),
      all(got[y * HP:y * HP + 11] == bytes(11) for y in range(H)))
'''


def test_async_2d_copies_into_page_locked_memory_share_the_path(node: NodeServer) -> None:
    res = run_client(TWO_D, env_for(node, "tcp4"))
    assert "ROWS True True" in res.stdout, res.stdout + res.stderr[-3000:]
    assert delivered(res.stderr)[0] == 5, res.stderr[-3000:]
