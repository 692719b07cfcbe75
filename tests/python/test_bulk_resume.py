"""Large copies survive a dropped connection (issue 12): a TCP proxy between the stub and the node server resets the
session's connections in the middle of a bulk copy (host→device and device→host, synchronous and asynchronous,
pageable and page-locked, over one stream and over several), the node's worker stays alive and waits for its client
(FARGPU_WORKER_LINGER_S), the stub reconnects, and the copy completes once, with every byte right and in order with
the stream's later work. A worker killed in the middle of a copy gives a CUDA error at that call or the next
synchronising one, in bounded time, never wrong data.

The simulated device keeps "device" memory in host memory: nothing here says anything about a GPU."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE
from cut_proxy import CutProxy
from e2e_helpers import NodeServer, start_server, stop_server

MB = 1 << 20

# Before each copy the program says which way its bytes go ("ARM up" / "ARM down") and waits for a line: the test
# arms the proxy to cut the connections once 12 MiB of that copy went through.
COPIES = PRELUDE + r'''
import hashlib
ctx0()
n = 32 << 20
st = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(st), 1), "stream")
r, p = alloc(n); ok(r, "alloc")
def pattern(seed):
    return (hashlib.sha256(seed).digest() * (n // 32))[:n]
def step(way):
    print("ARM", way, flush=True)
    sys.stdin.readline()
res = []
a = pattern(b"one")  # 1: synchronous, pageable
step("up")
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), a, ctypes.c_size_t(n)), "htod")
out = ctypes.create_string_buffer(n)
step("down")
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh")
res.append(out.raw == a)
b = pattern(b"two")  # 2: asynchronous, pageable, then stream work after it (a memset of its first 4 KiB)
step("up")
ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(p), b, ctypes.c_size_t(n), st), "htod async")
ok(cu.cuMemsetD8Async(ctypes.c_uint64(p), ctypes.c_ubyte(0xEE), ctypes.c_size_t(4096), st), "memset after")
out2 = ctypes.create_string_buffer(n)
step("down")
ok(cu.cuMemcpyDtoHAsync_v2(out2, ctypes.c_uint64(p), ctypes.c_size_t(n), st), "dtoh async")
ok(cu.cuStreamSynchronize(st), "sync")
res.append(out2.raw == b"\xee" * 4096 + b[4096:])
hp = ctypes.c_void_p()  # 3: asynchronous from page-locked memory
ok(cu.cuMemAllocHost_v2(ctypes.byref(hp), ctypes.c_size_t(n)), "allochost")
c = pattern(b"three")
ctypes.memmove(hp, c, n)
step("up")
ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(p), hp, ctypes.c_size_t(n), st), "htod pinned")
ok(cu.cuStreamSynchronize(st), "sync")
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh check")
res.append(out.raw == c)
ctypes.memset(hp, 0, n)  # 4: asynchronous into page-locked memory: its bytes follow the synchronisation's reply
ok(cu.cuMemcpyDtoHAsync_v2(hp, ctypes.c_uint64(p), ctypes.c_size_t(n), st), "dtoh pinned")
step("down")
ok(cu.cuStreamSynchronize(st), "sync")
res.append(ctypes.string_at(hp, n) == c)
print("RESULT", res, flush=True)
'''


def _drive(proxy: CutProxy, p: subprocess.Popen[str], which: str) -> None:
    assert p.stdout is not None and p.stdin is not None
    for line in p.stdout:
        if line.startswith("ARM"):
            proxy.arm(line.split()[1], 12 * MB, which)
            p.stdin.write("go\n")
            p.stdin.flush()
        elif line.startswith("RESULT"):
            assert line.strip() == "RESULT [True, True, True, True]", line
            return
        else:
            raise AssertionError(line)
    raise AssertionError("the program ended without a result")


@pytest.fixture
def lingering(tmp_path: Path) -> Iterator[NodeServer]:
    s = start_server(tmp_path, "--linger", "20")
    yield s
    stop_server(s)


@pytest.mark.parametrize("streams,which", [("1", "all"), ("4", "all"), ("4", "data")])
def test_bulk_copies_cut_mid_transfer_complete_with_every_byte(lingering: NodeServer, streams: str,
                                                               which: str) -> None:
    proxy = CutProxy(int(lingering.endpoint.rsplit(":", 1)[1]))
    env = lingering.client_env(FARGPU_SERVER=proxy.endpoint, FARGPU_STREAMS=streams, FARGPU_LOG="info",
                               FARGPU_RESUME_TIMEOUT_S="20")
    p = subprocess.Popen([sys.executable, "-P", "-c", COPIES], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
    t0 = time.monotonic()
    try:
        _drive(proxy, p, which)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        proxy.close()
    assert p.returncode == 0, err[-3000:]
    assert proxy.cuts == 6, (proxy.cuts, err[-3000:])  # every copy was cut
    # (cutting the data connections alone cuts the 4th step too: the reply delivering its async copy into page-locked
    # memory sends the copy's bytes over them)
    resumes = re.findall(r"resumed on \S+ after batch \d+", err)
    assert len(resumes) == 6, err[-3000:]
    log = lingering.log_text()
    assert log.count("the client reconnected") == len(resumes), log[-3000:]
    assert "a bulk copy of 33554432 bytes received again" in err  # a device→host copy ran again
    # the reply delivering the async copy into page-locked memory, its bytes after it over the new connection
    assert "(its last reply sent again)" in log, log[-3000:]
    deadline = time.monotonic() + 10  # the stub said goodbye at exit: the worker did not wait for it
    while "ended after" not in lingering.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the client closed the session" in lingering.log_text()
    assert time.monotonic() - t0 < 60


# The session's worker is killed in the middle of a copy (its node died; nothing was parked): the copy's call or the
# next synchronising one fails with a CUDA error, in bounded time, and a device→host copy never hands back bytes it
# did not read.
KILLED = PRELUDE + r'''
import hashlib
ctx0()
n = 96 << 20
r, p = alloc(n); ok(r, "alloc")
a = (hashlib.sha256(b"k").digest() * (n // 32))[:n]
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), a, ctypes.c_size_t(n)), "htod before")
way = sys.argv[1]
print("ARM", way, flush=True)
sys.stdin.readline()
out = ctypes.create_string_buffer(b"\x55" * n, n)
if way == "up":
    r1 = cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), a[::-1], ctypes.c_size_t(n))
else:
    r1 = cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n))
r2 = cu.cuCtxSynchronize()
print("CODES", r1, r2, "right" if way == "up" or r1 != 0 or out.raw == a else "WRONG", flush=True)
'''


@pytest.mark.parametrize("way", ["up", "down"])
def test_a_worker_killed_mid_copy_gives_a_cuda_error_in_bounded_time(lingering: NodeServer, way: str) -> None:
    proxy = CutProxy(int(lingering.endpoint.rsplit(":", 1)[1]))

    def kill_worker() -> None:
        pids = subprocess.run(["pgrep", "-P", str(lingering.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)

    proxy.on_cut = kill_worker
    env = lingering.client_env(FARGPU_SERVER=proxy.endpoint, FARGPU_STREAMS="3", FARGPU_RESUME_TIMEOUT_S="10")
    p = subprocess.Popen([sys.executable, "-P", "-c", KILLED, way], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None and p.stdin is not None
    try:
        assert p.stdout.readline().split() == ["ARM", way]
        t0 = time.monotonic()
        proxy.arm(way, 2 * MB, "none")
        out, err = p.communicate("go\n", timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
        proxy.close()
    assert proxy.cuts == 1, err[-3000:]
    m = re.search(r"CODES (\d+) (\d+) (\w+)", out)
    assert m, out + err[-3000:]
    # (a device→host copy whose bytes were all on their way before the kill may still complete, with its bytes)
    assert m.group(3) == "right" and m.group(2) == "46" and m.group(1) in ("0", "46")[way == "up":], out + err[-3000:]
    assert "could not be resumed" in err and took < 30, (took, err[-3000:])


# An asynchronous bulk host→device copy waits for a reply that acknowledges its bytes (so that they could be sent
# again), but that reply waits for no stream: it collects no async device→host copy (one still pending on another
# stream stays pending until the synchronisation), so the call stays asynchronous.
ACK = PRELUDE + r'''
ctx0()
a, b = ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(a), 1), "stream a")
ok(cu.cuStreamCreate(ctypes.byref(b), 1), "stream b")
r, small = alloc(4096); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(small), ctypes.c_ubyte(7), ctypes.c_size_t(4096)), "memset")
r, big = alloc(1 << 20); ok(r, "alloc")
hp = ctypes.c_void_p()
ok(cu.cuMemAllocHost_v2(ctypes.byref(hp), ctypes.c_size_t(4096)), "allochost")
ctypes.memset(hp, 0, 4096)
ok(cu.cuMemcpyDtoHAsync_v2(hp, ctypes.c_uint64(small), ctypes.c_size_t(4096), a), "dtoh on a")
src = ctypes.create_string_buffer(b"\x09" * (1 << 20), 1 << 20)
ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(big), src, ctypes.c_size_t(1 << 20), b), "bulk htod on b")
before = ctypes.string_at(hp, 4096)
ok(cu.cuStreamSynchronize(a), "sync a")
out = ctypes.create_string_buffer(1 << 20)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(big), ctypes.c_size_t(1 << 20)), "dtoh big")
print("ACK", before == bytes(4096), ctypes.string_at(hp, 4096) == b"\x07" * 4096, out.raw == src.raw, flush=True)
'''


def test_an_async_bulk_copy_is_acknowledged_without_waiting_for_streams(lingering: NodeServer) -> None:
    r = subprocess.run([sys.executable, "-P", "-c", ACK], env=lingering.client_env(FARGPU_STREAMS="2"),
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert "ACK True True True" in r.stdout, r.stdout + r.stderr[-3000:]
