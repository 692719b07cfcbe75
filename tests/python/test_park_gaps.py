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
from e2e_helpers import NodeServer, start_server, stop_server, wait_log
from park_fidelity_program import EXPECTED, PROGRAM


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
        wait_log(a, r"park of session \w+: parked sessions/\w+")
        stop_server(a)
        (tmp_path / "b").mkdir()
        b = start_server(tmp_path / "b", "--park-store", str(store), port=port)
        out, err = p.communicate("go\n", timeout=120)
        assert out.startswith(EXPECTED), out + err
        # before and after: elapsed a->b succeeds (about the 50 ms pause), a->never-recorded and a->no-timing fail
        m = re.search(r"elapsed_ms (\d+) codes 0 (\d+) (\d+) 0 \2 \3 queries \[0, 0, 0\]", out)
        assert m and int(m.group(1)) >= 40 and m.group(2) != "0" and m.group(3) != "0", out
        assert "resumed on" in err and "restored a parked session" in b.log_text()
        assert "a kernel parameter named a module global at its address before the park" in b.log_text()
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


def test_an_address_taken_on_the_restoring_node_fails_the_restore_and_the_session_stays_parked(tmp_path: Path) -> None:
    # Node B holds the range of one of the session's allocations (a test switch maps it in B's worker before the
    # restore, as the driver could): the restore must fail, never move the allocation, and leave the session
    # parked; the client keeps trying (the refusal says "retry") and resumes on node C, where the range is free.
    store = tmp_path / "store"
    a = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store))
    port = int(a.endpoint.rsplit(":", 1)[1])
    nodes: list[NodeServer] = []
    try:
        p, ready = _client(a, FARGPU_RESUME_TIMEOUT_S="60", FARGPU_LOG="info")
        addr = int(ready.split()[1], 16)
        wait_log(a, r"park of session \w+: parked sessions/\w+")
        stop_server(a)
        (tmp_path / "b").mkdir()
        b = start_server(tmp_path / "b", "--park-store", str(store), port=port,
                         env_extra={"FARGPU_PARK_TEST_OCCUPY_VA": f"{addr:#x}:{2 << 20:#x}"})
        nodes.append(b)
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
        m = wait_log(b, r"cannot restore session \w+: (.*)")
        assert f"{addr:#x}" in m.group(1) and "cannot be had on this node" in m.group(1), m.group(1)
        assert list(store.glob("sessions/*/session.json*")), "the session must stay parked"
        time.sleep(1.0)  # the client tries again meanwhile, and is refused again
        assert len(re.findall(r"cannot restore session", b.log_text())) >= 2, b.log_text()[-3000:]
        stop_server(b)
        (tmp_path / "c").mkdir()
        c = start_server(tmp_path / "c", "--park-store", str(store), port=port)
        nodes.append(c)
        out, err = p.communicate(timeout=120)
        assert out.startswith(EXPECTED), out + err
        assert "restored a parked session" in c.log_text()
    finally:
        stop_server(a)
        for s in nodes:
            stop_server(s)


CTX_EVENTS = PRELUDE + r'''
import time
ctx = ctx0()
st = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(st), 1), "stream")
evs = []
for _ in range(3):  # a: cuEventRecord; c: cuCtxRecordEvent; never: not recorded
    e = ctypes.c_void_p(); ok(cu.cuEventCreate(ctypes.byref(e), 0), "event"); evs.append(e)
ev_a, ev_c, ev_never = evs
r, p = alloc(1 << 20); ok(r, "alloc")  # resident memory: the idle session is paged out, then parked
ok(cu.cuEventRecord(ev_a, st), "record a")
ok(cu.cuStreamSynchronize(st), "sync")
time.sleep(0.05)
ok(cu.cuCtxRecordEvent(ctx, ev_c), "ctx record c")
ok(cu.cuCtxSynchronize(), "sync")
def elapsed(x, y):
    ms = ctypes.c_float()
    r = cu.cuEventElapsedTime(ctypes.byref(ms), x, y)
    return r, round(ms.value, 3)
before = (elapsed(ev_a, ev_c), elapsed(ev_c, ev_a), elapsed(ev_c, ev_never)[0])
print("READY", flush=True)
sys.stdin.readline()
after = (elapsed(ev_a, ev_c), elapsed(ev_c, ev_a), elapsed(ev_c, ev_never)[0])
ok(cu.cuStreamWaitEvent(st, ev_c, 0), "wait c")
ok(cu.cuStreamSynchronize(st), "sync after")
ok(cu.cuCtxRecordEvent(ctx, ev_c), "ctx record c again")
ok(cu.cuCtxSynchronize(), "sync again")
again = elapsed(ev_a, ev_c)[0]
print("RESULT same", after == before, "before", before, "query", cu.cuEventQuery(ev_c), "again", again, flush=True)
'''


def test_events_recorded_by_cuCtxRecordEvent_come_back_recorded_and_timed(tmp_path: Path) -> None:
    """An event cuCtxRecordEvent recorded comes back with a parked session as one cuEventRecord recorded does:
    complete, with the same elapsed times to the events recorded before the park (server/replay/park_events.c)."""
    store = tmp_path / "store"
    a = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store))
    port = int(a.endpoint.rsplit(":", 1)[1])
    b: NodeServer | None = None
    try:
        p = subprocess.Popen([sys.executable, "-P", "-c", CTX_EVENTS], env=a.client_env(FARGPU_RESUME_TIMEOUT_S="60"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None
        ready = p.stdout.readline().strip()
        assert ready == "READY", ready + (p.stderr.read() if p.stderr else "")
        wait_log(a, r"park of session \w+: parked sessions/\w+")
        stop_server(a)
        (tmp_path / "b").mkdir()
        b = start_server(tmp_path / "b", "--park-store", str(store), port=port)
        out, err = p.communicate("go\n", timeout=120)
        m = re.search(r"RESULT same (\w+) before \(\(0, ([\d.]+)\), \(0, -[\d.]+\), (\d+)\) query 0 again 0", out)
        assert m and m.group(1) == "True" and float(m.group(2)) >= 40 and m.group(3) != "0", out + err
        assert "restored a parked session" in b.log_text()
    finally:
        stop_server(a)
        if b is not None:
            stop_server(b)
