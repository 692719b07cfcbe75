"""Parking's fidelity on the simulated device: module globals a kernel changed without the client naming them, recorded
events and their timings, the address arena as a flag, and an address that is taken on the restoring node (the
restore fails clearly and the session stays parked, then resumes on a node where the range is free).

The simulated device places module globals wherever mmap does, so they move on restore; nothing here says anything
about a GPU (bench/park_gpu.sh checks the same on one)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, start_server, stop_server

# Bumps fg_magic from a kernel five times (the client never names it before the park), records timed events around
# a pause, allocates and fills memory; after "go" it checks the events, bumps once more and reads fg_magic back.
PROGRAM = PRELUDE + r'''
import time
ctx = ctx0()
mod = load_test_module()
bump = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(bump), mod, b"fg_bump_magic"), "getfunction")
st = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(st), 1), "stream")
def launch(add):
    a = ctypes.c_uint32(add)
    params = (ctypes.c_void_p * 1)(ctypes.addressof(a))
    ok(cu.cuLaunchKernel(bump, 1, 1, 1, 1, 1, 1, 0, st, params, None), "launch")
for _ in range(5):
    launch(7)
evs = []
for flags in (0, 0, 0, 2):  # a, b, never recorded, no timing
    e = ctypes.c_void_p(); ok(cu.cuEventCreate(ctypes.byref(e), flags), "event"); evs.append(e)
ev_a, ev_b, ev_never, ev_nt = evs
ok(cu.cuEventRecord(ev_a, st), "record a")
ok(cu.cuStreamSynchronize(st), "sync")
time.sleep(0.05)
ok(cu.cuEventRecord(ev_b, st), "record b")
ok(cu.cuEventRecord(ev_nt, st), "record nt")
ok(cu.cuStreamSynchronize(st), "sync")
def elapsed(x, y):
    ms = ctypes.c_float()
    r = cu.cuEventElapsedTime(ctypes.byref(ms), x, y)
    return r, ms.value
before = (elapsed(ev_a, ev_b), elapsed(ev_a, ev_never)[0], elapsed(ev_a, ev_nt)[0])
r, p = alloc(3 << 20); ok(r, "alloc")
ok(cu.cuMemsetD32_v2(ctypes.c_uint64(p), ctypes.c_uint32(0xA5A5A5A5), ctypes.c_size_t((3 << 20) // 4)), "memset")
print("READY", hex(p), flush=True)
sys.stdin.readline()
after = (elapsed(ev_a, ev_b), elapsed(ev_a, ev_never)[0], elapsed(ev_a, ev_nt)[0])
queries = [cu.cuEventQuery(e) for e in (ev_a, ev_b, ev_nt)]
launch(1)
ok(cu.cuStreamSynchronize(st), "sync")
g, gsize = ctypes.c_uint64(), ctypes.c_size_t()
ok(cu.cuModuleGetGlobal_v2(ctypes.byref(g), ctypes.byref(gsize), mod, b"fg_magic"), "getglobal")
val = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(val), g, ctypes.c_size_t(4)), "read magic")
out = ctypes.create_string_buffer(3 << 20)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(3 << 20)), "dtoh")
print("RESULT magic", hex(val.value), "memory", out.raw == b"\xa5" * (3 << 20), "elapsed_same", after == before,
      "elapsed_ms", round(before[0][1]), "codes", before[0][0], before[1], before[2], after[0][0], after[1], after[2],
      "queries", queries, flush=True)
'''

EXPECTED = "RESULT magic 0x1234569c memory True elapsed_same True"  # 0x12345678 + 5 * 7 + 1


def _wait_log(s: NodeServer, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, s.log_text())
        if m:
            return m
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the node log:\n{s.log_text()[-4000:]}")


def _client(s: NodeServer, **env: str) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen([sys.executable, "-P", "-c", PROGRAM], env=s.client_env(**env), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None
    ready = p.stdout.readline().strip()
    assert ready.startswith("READY"), ready + (p.stderr.read() if p.stderr else "")
    return p, ready


def test_unnamed_globals_and_recorded_events_come_back_with_a_parked_session(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store))
    port = int(a.endpoint.rsplit(":", 1)[1])
    b: NodeServer | None = None
    try:
        p, _ = _client(a, FARGPU_RESUME_TIMEOUT_S="60", FARGPU_LOG="info")
        _wait_log(a, r"park of session \w+: parked sessions/\w+")
        stop_server(a)
        (tmp_path / "b").mkdir()
        b = start_server(tmp_path / "b", "--park-store", str(store), port=port)
        out, err = p.communicate("go\n", timeout=120)
        assert out.startswith(EXPECTED), out + err
        # before and after: elapsed a->b succeeds (about the 50 ms pause), a->never-recorded and a->no-timing fail
        m = re.search(r"elapsed_ms (\d+) codes 0 (\d+) (\d+) 0 \2 \3 queries \[0, 0, 0\]", out)
        assert m and int(m.group(1)) >= 40 and m.group(2) != "0" and m.group(3) != "0", out
        assert "resumed on" in err and "restored a parked session" in b.log_text()
    finally:
        stop_server(a)
        if b is not None:
            stop_server(b)


def test_the_arena_is_a_flag_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--arena", "0x500000000000:4G")
    try:
        p, ready = _client(s)
        assert 0x500000000000 <= int(ready.split()[1], 16) < 0x500000000000 + (4 << 30), ready
        p.kill()
        p.wait()
    finally:
        stop_server(s)
    r = subprocess.run([sys.executable, "-P", "-m", "fargpu.server", "--backend", "sim", "--listen", "127.0.0.1:0",
                        "--arena", "0x7ff000000000:16T"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--arena" in r.stderr and "47-bit" in r.stderr, r.stderr
