"""The worker stages async device→host copies in page-locked buffers of its own (server/replay/pinstage.c), so that on
a GPU the DMA runs in stream order instead of holding the replay thread until the copy is done. On the simulated
device (a test double: it runs stream work at enqueue, so no GPU timing rests on these) the worker's log at the
session's end says where each copy was staged; these tests check that line against what the client sent: every
copy in page-locked memory, buffers reused across many copies on several streams, the copies beyond
FARGPU_WORKER_PINNED_STAGE_MB (and all of them with 0) in pageable memory as before, a capture's copy not staged,
copies pending when their context is destroyed or their client is killed waited for and every buffer released. The
bytes are checked against what was written to the device, over TCP with one and four streams and the unix socket."""

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
STAGED = re.compile(r"fargpu-worker\[(\d+)\]: (\d+) async device-to-host copies staged in page-locked memory, "
                    r"(\d+) in pageable memory \((\d+) beyond the (\d+) MiB cap, (\d+) under stream capture\); "
                    r"(\d+) staging buffers \((\d+) bytes, (\d+) at most\) released, (\d+) still held")


def _node(tmp_path_factory: pytest.TempPathFactory, name: str, cap_mb: str | None) -> Iterator[NodeServer]:
    sock = Path("/tmp") / f"fargpu-pinstage-{name}-{os.getpid()}.sock"
    env = {"FARGPU_WORKER_PINNED_STAGE_MB": cap_mb} if cap_mb is not None else None
    s = start_server(tmp_path_factory.mktemp(f"pinstage_{name}"), "--unix", str(sock), env_extra=env)
    s.unix = str(sock)  # type: ignore[attr-defined]
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    yield from _node(tmp_path_factory, "default", None)


@pytest.fixture(scope="module")
def small_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    yield from _node(tmp_path_factory, "cap4", "4")


@pytest.fixture(scope="module")
def off_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    yield from _node(tmp_path_factory, "off", "0")


def env_for(node: NodeServer, transport: str, **extra: str) -> dict[str, str]:
    env = dict(TRANSPORTS[transport], FARGPU_STATS="1", **extra)
    if transport == "unix":
        env["FARGPU_SERVER"] = node.unix  # type: ignore[attr-defined]
    return node.client_env(**env)


def sent(stderr: str, op: str) -> int:
    m = re.search(rf"^\s+{op}\s+\w+\s+sent\s+(\d+)", stderr, re.M)
    return int(m.group(1)) if m else 0


def staged_line(node: NodeServer, before: int, pid: int | None = None) -> dict[str, int]:
    """The worker's account of its staging at the session's end (waited for: the worker logs it as it closes); the
    worker is `pid`, or the first one the node started after `before` (an earlier one may log its end later)."""
    keys = ("pid", "pinned", "pageable", "over_cap", "cap_mb", "captured", "buffers", "bytes", "peak", "held")
    if pid is None:
        started = re.search(r"-> worker (\d+)", node.log_text()[before:])
        assert started, node.log_text()[before:][-3000:]
        pid = int(started.group(1))
    deadline = time.monotonic() + 20
    while True:
        for m in STAGED.finditer(node.log_text()[before:]):
            got = dict(zip(keys, (int(g) for g in m.groups()), strict=True))
            if got["pid"] == pid:
                return got
        if time.monotonic() > deadline:
            raise AssertionError(node.log_text()[before:][-3000:])
        time.sleep(0.05)


# Rounds of copies on three streams and the legacy stream: small ones (into pageable and page-locked memory: both
# are async records below 256 KiB), medium and large ones (up to the stub's 32 MiB chunk and beyond it), several
# pending at once, each round synchronised another way; a host function after copies on its stream reads them
# (delivered with its RUN message from the worker's buffers). Every round rewrites the device first, so a buffer
# reused before its copy was delivered would show the wrong round's bytes.
MANY = P + r'''
import random, os
ctx0()
rng = random.Random(int(os.environ["SEED"]))
CAP = 48 * MiB
r, dev = alloc(CAP); ok(r, "alloc")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(CAP)), "allochost")
pageable = ctypes.create_string_buffer(1 << 20)
streams = [None]
for i in range(3):
    s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream"); streams.append(s)
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
seen_by_fn = []
bad, checks = [], 0
for rnd in range(int(os.environ["ROUNDS"])):
    ref = rng.randbytes(CAP)
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), ref, ctypes.c_size_t(CAP)), "htod")
    jobs, at, pat = [], 0, 0
    for i in range(rng.randrange(6, 14)):
        n = rng.choice([1, 100, 4095, 64 * 1024, 64 * 1024 + 1, 200 * 1024, 256 * 1024 + 7, 3 * MiB + 1, 9 * MiB])
        if rnd % 4 == 3 and i == 0: n = 33 * MiB + 3  # past the stub's 32 MiB chunk: two records
        src = rng.randrange(0, CAP - n)
        s = streams[i % 4]
        if n <= 64 * 1024 and i % 2 and pat + n <= len(pageable):
            dst = ctypes.addressof(pageable) + pat; pat += n + 5
        else:
            if at + n > CAP: break
            dst = pin.value + at; at += n + 17
        ctypes.memset(dst, 0, n)
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(dst), ctypes.c_uint64(dev + src), ctypes.c_size_t(n), s), "dtoh")
        jobs.append((dst, src, n, s))
    way = rnd % 3
    if way == 0:
        ok(cu.cuCtxSynchronize(), "ctx sync")
    elif way == 1:
        for s in streams: ok(cu.cuStreamSynchronize(s), "stream sync")
    else:  # a host function on each stream after its copies checks them, then the context is synchronised
        def check(arg, _jobs=jobs):
            s = streams[arg or 0]
            seen_by_fn.append(all(ctypes.string_at(d, n) == ref[src:src + n] for d, src, n, js in _jobs if js is s))
        fn = HOSTFN(check)
        fns = [fn]
        for k, s in enumerate(streams): ok(cu.cuLaunchHostFunc(s, fn, ctypes.c_void_p(k)), "hostfn")
        ok(cu.cuCtxSynchronize(), "ctx sync")
    for dst, src, n, s in jobs:
        checks += 1
        if ctypes.string_at(dst, n) != ref[src:src + n]: bad.append((rnd, n))
print("CHECKS", checks, "BAD", bad, "FN", len(seen_by_fn), all(seen_by_fn))
'''


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_many_copies_on_several_streams_are_staged_in_page_locked_memory(node: NodeServer, transport: str) -> None:
    before = len(node.log_text())
    res = run_client(MANY, env_for(node, transport, SEED=str(len(transport)), ROUNDS="12"), timeout=240)
    out = res.stdout + res.stderr[-3000:]
    m = re.search(r"CHECKS (\d+) BAD \[\] FN (\d+) True", res.stdout)
    assert res.returncode == 0 and m and int(m.group(1)) > 80 and int(m.group(2)) == 16, out
    records = sent(res.stderr, "cuMemcpyDtoHAsync_v2")
    st = staged_line(node, before)
    # Every copy record the worker staged went to page-locked memory; none to pageable memory.
    assert st["pinned"] == records and st["pageable"] == 0 and st["over_cap"] == 0 and st["captured"] == 0, (st, out)
    # Reused: far fewer buffers than copies, within the default cap, and every one given back at the end.
    assert 0 < st["buffers"] < records // 3 and st["peak"] <= 256 * MiB and st["held"] == 0, (st, records)
    assert st["cap_mb"] == 256, st


CAPPED = P + r'''
import random
ctx0()
rng = random.Random(5)
n = 3 * MiB
r, dev = alloc(8 * n); ok(r, "alloc")
ref = rng.randbytes(8 * n)
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), ref, ctypes.c_size_t(8 * n)), "htod")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(8 * n)), "allochost")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
bad = []
for rnd in range(2):  # six 3 MiB copies pending at once: one 4 MiB buffer fits the 4 MiB cap, five do not
    ctypes.memset(pin, 0, 8 * n)
    for i in range(6):
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + i * n), ctypes.c_uint64(dev + (i + rnd) * n),
                                   ctypes.c_size_t(n), s), "dtoh")
    ok(cu.cuStreamSynchronize(s), "sync")
    for i in range(6):
        if ctypes.string_at(pin.value + i * n, n) != ref[(i + rnd) * n:(i + rnd + 1) * n]: bad.append((rnd, i))
# then four small ones: the idle 4 MiB buffer is given back to make room for them
for i in range(4):
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + i * MiB), ctypes.c_uint64(dev + i * 100000),
                               ctypes.c_size_t(100000), s), "dtoh small")
ok(cu.cuStreamSynchronize(s), "sync")
bad += [("small", i) for i in range(4) if ctypes.string_at(pin.value + i * MiB, 100000) !=
        ref[i * 100000:(i + 1) * 100000]]
print("BAD", bad)
'''


@pytest.mark.parametrize("transport", ["tcp4", "unix"])
def test_copies_beyond_the_cap_fall_back_to_pageable_memory(small_node: NodeServer, transport: str) -> None:
    before = len(small_node.log_text())
    res = run_client(CAPPED, env_for(small_node, transport), timeout=120)
    assert res.returncode == 0 and "BAD []" in res.stdout, res.stdout + res.stderr[-3000:]
    st = staged_line(small_node, before)
    assert (st["pinned"], st["pageable"], st["over_cap"], st["cap_mb"]) == (6, 10, 10, 4), st
    assert st["peak"] <= 4 * MiB and st["held"] == 0, st


def test_mixed_copies_under_a_small_cap_stay_byte_exact(small_node: NodeServer) -> None:
    """The many-copies program against a 4 MiB cap: buffers given back to make room for other sizes, copies beyond
    it in pageable memory, every byte right."""
    before = len(small_node.log_text())
    res = run_client(MANY, env_for(small_node, "tcp4", SEED="9", ROUNDS="8"), timeout=240)
    assert res.returncode == 0 and re.search(r"CHECKS \d+ BAD \[\] FN \d+ True", res.stdout), \
        res.stdout + res.stderr[-3000:]
    st = staged_line(small_node, before)
    assert st["pinned"] + st["pageable"] == sent(res.stderr, "cuMemcpyDtoHAsync_v2"), st
    assert st["pinned"] > 0 and st["over_cap"] > 0 and st["pageable"] == st["over_cap"], st
    assert st["peak"] <= 4 * MiB and st["held"] == 0, st


def test_a_cap_of_zero_stages_every_copy_in_pageable_memory(off_node: NodeServer) -> None:
    before = len(off_node.log_text())
    res = run_client(CAPPED, env_for(off_node, "tcp1"), timeout=120)
    assert res.returncode == 0 and "BAD []" in res.stdout, res.stdout + res.stderr[-3000:]
    st = staged_line(off_node, before)
    assert (st["pinned"], st["pageable"], st["buffers"], st["peak"]) == (0, 16, 0, 0), st


# A copy on a capturing stream never reaches the worker's staging: the stub captures it as a device-to-device copy
# into a device shadow of the destination (client_stub/capture_copies.c), which each launch copies back; a launch
# delivers the device's bytes into the page-locked buffer like any async copy.
CAPTURE = P + r'''
ctx0()
r, dev = alloc(1 << 20); ok(r, "alloc")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(1 << 20)), "allochost")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(dev), ctypes.c_ubyte(9), ctypes.c_size_t(1 << 20)), "memset")
ok(cu.cuMemcpyDtoHAsync_v2(pin, ctypes.c_uint64(dev), ctypes.c_size_t(4096), s), "before")
ok(cu.cuStreamSynchronize(s), "sync")
ok(cu.cuStreamBeginCapture_v2(s, 2), "begin")  # relaxed
r1 = cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + 8192), ctypes.c_uint64(dev), ctypes.c_size_t(4096), s)
g = ctypes.c_void_p(); r2 = cu.cuStreamEndCapture(s, ctypes.byref(g))
e = ctypes.c_void_p(); ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(e), g, ctypes.c_uint64(0)), "instantiate")
ok(cu.cuGraphLaunch(e, s), "launch")
ok(cu.cuMemcpyDtoHAsync_v2(pin, ctypes.c_uint64(dev), ctypes.c_size_t(4096), s), "after")
ok(cu.cuStreamSynchronize(s), "sync")
launched = ctypes.string_at(pin.value + 8192, 4096) == bytes([9]) * 4096
cu.cuGraphExecDestroy(e); cu.cuGraphDestroy(g)
print("CAPTURED", r1, r2, ctypes.string_at(pin, 4096) == bytes([9]) * 4096, launched)
'''


def test_a_copy_under_stream_capture_is_not_staged(node: NodeServer) -> None:
    before = len(node.log_text())
    res = run_client(CAPTURE, env_for(node, "tcp1"), timeout=60)
    assert res.returncode == 0 and "CAPTURED 0 0 True True" in res.stdout, res.stdout + res.stderr[-3000:]
    st = staged_line(node, before)
    # The two plain copies and the launch's copy back from the shadow; nothing staged under capture.
    assert (st["pinned"], st["pageable"], st["captured"]) == (3, 0, 0), st


# Copies still staged (not synchronised) when their context is destroyed: the worker waits for them before the
# context goes, the reply to cuCtxDestroy delivers them, and a new context's copies are staged again in the same
# buffers (registered again under it).
CTX_DESTROY = P + r'''
import random
ok(cu.cuInit(0), "init")
rng = random.Random(8)
results = []
for k in range(3):
    ctx = ctypes.c_void_p(); ok(cu.cuCtxCreate_v4(ctypes.byref(ctx), None, 0, 0), "create")
    n = 6 * MiB
    r, dev = alloc(n); ok(r, "alloc")
    ref = rng.randbytes(n)
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), ref, ctypes.c_size_t(n)), "htod")
    pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(n)), "allochost")
    ctypes.memset(pin, 0, n)
    streams = []
    for i in range(2):
        s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream"); streams.append(s)
    spans = [(0, 1000), (4096, 60000), (70000, 300000), (400000, 2 * MiB), (3 * MiB, 3 * MiB)]
    for i, (off, m) in enumerate(spans):
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + off), ctypes.c_uint64(dev + off), ctypes.c_size_t(m),
                                   streams[i % 2]), "dtoh")
    ok(cu.cuCtxDestroy_v2(ctx), "destroy")  # no synchronisation before it
    results.append(all(ctypes.string_at(pin.value + off, m) == ref[off:off + m] for off, m in spans))
print("DESTROYED", results)
'''


@pytest.mark.parametrize("transport", ["tcp4", "unix"])
def test_copies_pending_when_their_context_is_destroyed(node: NodeServer, transport: str) -> None:
    before = len(node.log_text())
    res = run_client(CTX_DESTROY, env_for(node, transport), timeout=120)
    assert res.returncode == 0 and "DESTROYED [True, True, True]" in res.stdout, res.stdout + res.stderr[-3000:]
    st = staged_line(node, before)
    assert (st["pinned"], st["pageable"], st["held"]) == (15, 0, 0), st
    assert st["buffers"] <= 6, st  # one slab, three classes (128 KiB, 512 KiB, 2 MiB, 4 MiB): reused by each context


# Killed with copies staged and not yet delivered (and, before that, a stream of copies delivered over and over):
# the worker waits for them, releases every buffer, and exits; the node serves the next client.
KILLED = P + r'''
import os
ctx0()
n = 24 * MiB
r, dev = alloc(n); ok(r, "alloc")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(n)), "allochost")
streams = []
for i in range(3):
    s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream"); streams.append(s)
for k in range(20):
    for i, m in enumerate([5000, 300000, 7 * MiB]):
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + i * 8 * MiB), ctypes.c_uint64(dev), ctypes.c_size_t(m),
                                   streams[i]), "dtoh")
    ok(cu.cuCtxSynchronize(), "sync")
for i, m in enumerate([5000, 300000, 7 * MiB]):
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + i * 8 * MiB), ctypes.c_uint64(dev), ctypes.c_size_t(m),
                               streams[i]), "dtoh pending")
print("GO", flush=True)  # the stub's sender sends the pending records unanswered (FARGPU_SEND_AFTER_US)
if os.environ.get("LOOP"):
    while True:
        ok(cu.cuMemcpyDtoHAsync_v2(pin, ctypes.c_uint64(dev), ctypes.c_size_t(n), streams[0]), "dtoh")
        ok(cu.cuCtxSynchronize(), "sync")
else:
    import time; time.sleep(60)
'''


@pytest.mark.parametrize(("transport", "loop"), [("tcp4", ""), ("unix", ""), ("tcp4", "1")])
def test_a_client_killed_with_copies_staged_leaves_no_buffer(node: NodeServer, transport: str, loop: str) -> None:
    before = len(node.log_text())
    proc = subprocess.Popen([sys.executable, "-P", "-c", KILLED], env=env_for(node, transport, LOOP=loop),
                            stdout=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
    time.sleep(0.3)
    pid = int(re.findall(r"-> worker (\d+)", node.log_text()[before:])[-1])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_process_gone(pid, "the worker outlived its client")
    st = staged_line(node, before, pid)
    # the three copies still staged at the kill among them (waited for, then their buffers released)
    assert st["pinned"] == 63 if not loop else st["pinned"] > 63, st
    assert st["pageable"] == 0 and st["held"] == 0 and st["buffers"] >= 3, st
    res = run_client(MANY, env_for(node, transport, SEED="1", ROUNDS="3"), timeout=120)
    assert re.search(r"CHECKS \d+ BAD \[\]", res.stdout), res.stdout + res.stderr[-3000:]


# Copies still staged when their stream is destroyed (cuStreamDestroy returns at once, the work completes later, as
# natively): the worker waits for the stream before it goes, and the copies arrive whole with no error.
STREAM_DESTROY = P + r'''
ctx0()
n = 5 * MiB
r, dev = alloc(n); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(dev), ctypes.c_ubyte(0x5a), ctypes.c_size_t(n)), "memset")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(2 * n)), "allochost")
ctypes.memset(pin, 0, 2 * n)
res = []
for k in range(3):
    s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
    ok(cu.cuMemcpyDtoHAsync_v2(pin, ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh large")
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + n), ctypes.c_uint64(dev), ctypes.c_size_t(1000), s), "dtoh")
    res.append(cu.cuStreamDestroy_v2(s))
    res.append(cu.cuCtxSynchronize())
    res.append(ctypes.string_at(pin, n) == b"\x5a" * n and ctypes.string_at(pin.value + n, 1000) == b"\x5a" * 1000)
    ctypes.memset(pin, 0, 2 * n)
print("STREAMS", res)
'''


@pytest.mark.parametrize("transport", ["tcp1", "unix"])
def test_copies_pending_when_their_stream_is_destroyed(node: NodeServer, transport: str) -> None:
    before = len(node.log_text())
    res = run_client(STREAM_DESTROY, env_for(node, transport), timeout=60)
    assert res.returncode == 0 and "STREAMS [0, 0, True, 0, 0, True, 0, 0, True]" in res.stdout, \
        res.stdout + res.stderr[-3000:]
    st = staged_line(node, before)
    assert (st["pinned"], st["pageable"], st["held"]) == (6, 0, 0), st


# An idle session paged out gives back its idle staging buffers with its device memory; its next copies make them
# again, byte-exact.
PAGED = P + r'''
import random
ctx0()
rng = random.Random(4)
n = 4 * MiB
r, dev = alloc(n); ok(r, "alloc")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(n)), "allochost")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
def rounds(k):
    good = True
    for _ in range(k):
        ref = rng.randbytes(n)
        ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), ref, ctypes.c_size_t(n)), "htod")
        ctypes.memset(pin, 0, n)
        for off, m in [(0, 3000), (8192, 500000), (MiB, 3 * MiB)]:
            ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value + off), ctypes.c_uint64(dev + off), ctypes.c_size_t(m),
                                       s), "dtoh")
        ok(cu.cuStreamSynchronize(s), "sync")
        good = good and all(ctypes.string_at(pin.value + off, m) == ref[off:off + m]
                            for off, m in [(0, 3000), (8192, 500000), (MiB, 3 * MiB)])
    return good
print("FIRST", rounds(3), flush=True)
sys.stdin.readline()
print("AFTER", rounds(3), flush=True)
'''


def test_a_paged_out_session_gives_back_its_idle_staging_buffers(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--idle-page-out", "1", "--host-page-pool", "64M")
    try:
        p = subprocess.Popen([sys.executable, "-P", "-c", PAGED], env=s.client_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None and p.stdout.readline().strip() == "FIRST True"
        deadline = time.monotonic() + 30
        while not re.search(r"paged out: 3 idle page-locked staging buffers \(\d+ bytes\) given back", s.log_text()):
            assert time.monotonic() < deadline, s.log_text()[-3000:]
            time.sleep(0.05)
        out, err = p.communicate("go\n", timeout=60)
        assert out.strip() == "AFTER True", out + err[-3000:]
        st = staged_line(s, 0)
        assert (st["pinned"], st["pageable"], st["buffers"], st["held"]) == (18, 0, 3, 0), st
    finally:
        stop_server(s)
