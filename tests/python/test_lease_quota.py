"""A lease's VRAM quota covers all of its sessions on a node, summed, however many there are and however they
start; a lease's number of sessions is bounded; created contexts are charged. Real node servers on the
simulated device, real stub clients (one process per session), held open at once.

Before the quota was per lease, 4 sessions of 48 MiB each under a 64 MiB lease used 192 MiB."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, start_server, stop_server

MiB = 1 << 20

# A session that allocates, says how that went, and holds its memory until told to go (a line on stdin).
HOLD = PRELUDE + r'''
ctx0()
r, p = alloc(int(sys.argv[1]))
free_b, total_b = meminfo()
print("ALLOC", r, total_b, flush=True)
sys.stdin.readline()
'''


@contextmanager
def _sessions(env: dict[str, str], sizes: list[int]) -> Iterator[list[tuple[int, int]]]:
    """Starts one client per size at once; yields each one's (cuMemAlloc result, total memory it sees) while
    all of them still hold their memory."""
    procs = [subprocess.Popen([sys.executable, "-P", "-c", HOLD, str(n)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/") for n in sizes]
    try:
        results = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            assert line[:1] == ["ALLOC"], f"client failed: {line} {p.stderr.read() if p.stderr else ''}"
            results.append((int(line[1]), int(line[2])))
        yield results
    finally:
        for p in procs:
            try:
                p.communicate("go\n", timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_sessions_gone(s: NodeServer, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.log_text().count("ended (worker exit") >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{n} sessions did not end:\n{s.log_text()[-2000:]}")


def test_sessions_of_one_lease_share_its_quota(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB))
    try:
        env = s.client_env()
        # 8 sessions started at once, 24 MiB each, under 64 MiB: exactly two fit, whatever the order.
        with _sessions(env, [24 * MiB] * 8) as res:
            assert sorted(r for r, _ in res) == [0, 0] + [2] * 6, res  # 2 = CUDA_ERROR_OUT_OF_MEMORY
            assert all(total == 64 * MiB for _, total in res)
        _wait_sessions_gone(s, 8)
        # Their charges went with them: the whole quota is there again, for one session or several.
        with _sessions(env, [64 * MiB]) as res:
            assert res == [(0, 64 * MiB)]
        with _sessions(env, [32 * MiB, 32 * MiB]) as res:
            assert [r for r, _ in res] == [0, 0]
    finally:
        stop_server(s)


def test_a_killed_session_gives_its_charge_back(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB))
    try:
        env = s.client_env()
        holder = subprocess.Popen([sys.executable, "-P", "-c", HOLD, str(48 * MiB)], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd="/")
        assert holder.stdout is not None and holder.stdout.readline().split()[:2] == ["ALLOC", "0"]
        with _sessions(env, [32 * MiB]) as res:
            assert res[0][0] == 2  # 48 + 32 > 64 while the holder lives
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        _wait_sessions_gone(s, 2)
        with _sessions(env, [64 * MiB]) as res:
            assert res[0][0] == 0
    finally:
        stop_server(s)


def test_session_count_per_lease_is_bounded(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB), "--max-sessions-per-lease", "2")
    try:
        env = s.client_env()
        with _sessions(env, [2 * MiB, 2 * MiB]) as res:
            assert [r for r, _ in res] == [0, 0]
            third = subprocess.run([sys.executable, "-P", "-c", HOLD, str(2 * MiB)], env=env, input="go\n",
                                   capture_output=True, text=True, timeout=60, cwd="/")
            assert third.returncode != 0 and "ALLOC" not in third.stdout
            assert "already has 2 session(s) on this node" in third.stderr, third.stderr
        _wait_sessions_gone(s, 2)
        with _sessions(env, [2 * MiB]) as res:  # a slot is free again
            assert res[0][0] == 0
    finally:
        stop_server(s)


CTX = PRELUDE + r'''
ok(cu.cuInit(0), "cuInit")
ctxs = []
for i in range(int(sys.argv[1])):
    c = ctypes.c_void_p()
    r = cu.cuCtxCreate_v4(ctypes.byref(c), None, 0, 0)
    print("CREATE", r, flush=True)
    if r == 0:
        ctxs.append(c)
r, p = alloc(16 << 20)
print("ALLOC", r, flush=True)
if ctxs:
    ok(cu.cuCtxDestroy_v2(ctxs[0]), "destroy")
    r, p = alloc(16 << 20)
    print("ALLOC", r, flush=True)
'''


def test_created_contexts_are_charged_to_the_lease(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB), "--ctx-charge", "20M")
    try:
        res = subprocess.run([sys.executable, "-P", "-c", CTX, "4"], env=s.client_env(), capture_output=True,
                             text=True, timeout=60, cwd="/")
        lines = res.stdout.split("\n")
        # Three contexts (60 MiB of 64) fit, the fourth does not; then 16 MiB does not fit until one is destroyed.
        assert lines[:6] == ["CREATE 0", "CREATE 0", "CREATE 0", "CREATE 2", "ALLOC 2", "ALLOC 0"], (
            res.stdout + res.stderr)
    finally:
        stop_server(s)
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB))  # the default charge, about an H100 context
    try:
        res = subprocess.run([sys.executable, "-P", "-c", CTX, "1"], env=s.client_env(), capture_output=True,
                             text=True, timeout=60, cwd="/")
        assert res.stdout.startswith("CREATE 2"), res.stdout + res.stderr
    finally:
        stop_server(s)


GREEN = PRELUDE + r'''
ctx0()
res = ctypes.create_string_buffer(144)
ok(cu.cuDeviceGetDevResource(0, res, 1), "device resource")  # CU_DEV_RESOURCE_TYPE_SM
desc = ctypes.c_void_p()
ok(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "descriptor")
greens = []
for i in range(int(sys.argv[1])):
    g = ctypes.c_void_p()
    r = cu.cuGreenCtxCreate(ctypes.byref(g), desc, 0, 1)  # CU_GREEN_CTX_DEFAULT_STREAM
    print("GREEN", r, flush=True)
    if r == 0:
        greens.append(g)
r, p = alloc(16 << 20)
print("ALLOC", r, flush=True)
ok(cu.cuGreenCtxDestroy(greens[0]), "destroy")
r, p = alloc(16 << 20)
print("ALLOC", r, flush=True)
if sys.argv[2:] == ["die"]:  # dies holding its other green contexts
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_green_contexts_are_charged_and_go_with_a_dead_client(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--vram-quota", str(64 * MiB), "--ctx-charge", "20M")
    try:
        env = s.client_env()
        res = subprocess.run([sys.executable, "-P", "-c", GREEN, "4", "die"], env=env, capture_output=True,
                             text=True, timeout=60, cwd="/")
        lines = res.stdout.split("\n")
        # Three green contexts (60 MiB of 64) fit, the fourth does not; 16 MiB fits only once one is destroyed.
        assert lines[:6] == ["GREEN 0", "GREEN 0", "GREEN 0", "GREEN 2", "ALLOC 2", "ALLOC 0"], (
            res.stdout + res.stderr)
        assert res.returncode == -9, res.returncode
        _wait_sessions_gone(s, 1)
        # The dead client's two green contexts and its memory went with its worker: the lease has its quota again.
        with _sessions(env, [60 * MiB]) as held:
            assert held[0][0] == 0, held
    finally:
        stop_server(s)
