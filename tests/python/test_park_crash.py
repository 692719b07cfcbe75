"""Crash safety of parking on the simulated device: a kill -9 of the session's worker or of the node server at seeded
random points of a park or a restore leaves the session parked complete (its client resumes it with every byte) or
gone (its client gets a CUDA error), never resumed with wrong memory; and nothing stays behind: no worker process, no
park or restore work directory, no spill file, no object in the park store, no memory still charged on the node.

A test switch widens the windows (FARGPU_PARK_TEST_COMMIT_DELAY_S: a pause between the upload and the commit;
FARGPU_PARK_TEST_RESTORE_PAUSE_S: a pause before the worker restores). Nothing here says anything about a GPU."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, start_server, stop_server

MiB = 1 << 20
SEEDS = (11, 23)

PROGRAM = PRELUDE + r'''
import hashlib
ctx0()
n = 16 << 20
r, p = alloc(n); ok(r, "alloc")
data = (hashlib.sha256(b"park-crash").digest() * (n // 32))[:n]
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), data, ctypes.c_size_t(n)), "htod")
print("READY", flush=True)
sys.stdin.readline()
# a small call first: the stub resumes a session whose connection dropped at its next call, but a drop found in
# the middle of a bulk copy ends the session (client_stub/bulk.c), which is not what these tests are about
r = cu.cuCtxSynchronize()
out = ctypes.create_string_buffer(n)
r = r or cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n))
print("ERROR %d" % r if r else ("SAME" if out.raw == data else "DIFFERENT"), flush=True)
'''


def _wait_log(s: NodeServer, pattern: str, after: int = 0, timeout: float = 30.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, s.log_text()[after:])
        if m:
            return m
        time.sleep(0.02)
    raise AssertionError(f"no {pattern!r} in the node log:\n{s.log_text()[-4000:]}")


def _client(s: NodeServer) -> subprocess.Popen[str]:
    env = s.client_env(FARGPU_RESUME_TIMEOUT_S="20", FARGPU_LOG="info")
    p = subprocess.Popen([sys.executable, "-P", "-c", PROGRAM], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line == "READY", line + (p.stderr.read() if p.stderr else "")
    return p


def _workers(s: NodeServer) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(s.proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(w) for w in out]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _assert_nothing_left(s: NodeServer, store: Path, spill: Path) -> None:
    deadline = time.monotonic() + 10
    while _workers(s) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _workers(s), "a session worker is still running"

    def left_in_store() -> list[Path]:
        return [p for p in store.rglob("*") if p.is_file() and not p.relative_to(store).parts[0] == "images"]

    # the node sweeps at start, beside serving (a loaded machine may answer the client first)
    while left_in_store() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = left_in_store()
    assert not left, f"park store objects left: {left}"
    assert not [p for p in spill.iterdir() if p.suffix in (".park", ".restore", ".pages")], list(spill.iterdir())
    # nothing of the killed sessions is still charged on the node: a new session gets nearly all 256 MiB at once
    mark = len(s.log_text())
    r = subprocess.run([sys.executable, "-P", "-c", PRELUDE + "ctx0(); r, p = alloc(240 << 20); print(r)"],
                       env=s.client_env(), capture_output=True, text=True, timeout=60, cwd="/")
    assert r.stdout.strip() == "0", r.stdout + r.stderr
    assert "made room" not in s.log_text()[mark:]


def _node(tmp: Path, store: Path, spill: Path, port: int = 0, **env: str) -> NodeServer:
    return start_server(tmp, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store), "--spill-dir",
                        str(spill), port=port, env_extra={"FARGPU_SIM_MEM_BYTES": str(256 * MiB), **env})


def test_worker_killed_at_random_points_of_a_park(tmp_path: Path) -> None:
    store, spill = tmp_path / "store", tmp_path / "spill"
    s = _node(tmp_path, store, spill, FARGPU_PARK_TEST_COMMIT_DELAY_S="0.3")
    try:
        # None: right after the state is written (the upload or the commit pause): the park must still complete;
        # 0: at the page-out, before any park began: the session is gone; the seeds: anywhere from there
        for seed in (None, 0, *SEEDS):
            mark = len(s.log_text())
            client = _client(s)
            sid, pid = _wait_log(s, r"session (\w+) for lease \S+ \(client [^)]*\) -> worker (\d+)", mark).groups()
            if seed is None:
                _wait_log(s, rf"session {sid}: its state is written", mark)
            else:
                _wait_log(s, rf"page-out of session {sid}: paged", mark)
                time.sleep(random.Random(seed).uniform(0.0, 1.2) if seed else 0.0)
            _kill([int(pid)])
            _wait_log(s, rf"session {sid} ended", mark)
            parked = False  # a park that began ends one way or the other (none begins once the session ended)
            if re.search(rf"parking session {sid}\b", s.log_text()[mark:]):
                parked = _wait_log(s, rf"park of session {sid}: (\w+)", mark).group(1) == "parked"
            out, err = client.communicate("go\n", timeout=90)
            print(f"park, seed {seed}: parked={parked} client={out.strip()}")
            assert out.strip() in ("SAME", "ERROR 46"), f"seed {seed}: {out} {err}"
            assert (out.strip() == "SAME") == parked, f"seed {seed}: parked={parked}, client {out} {err}"
            if seed is None or seed == 0:
                assert parked == (seed is None), s.log_text()[mark:]
        _assert_nothing_left(s, store, spill)
    finally:
        stop_server(s)


def test_worker_killed_at_random_points_of_a_restore(tmp_path: Path) -> None:
    store, spill = tmp_path / "store", tmp_path / "spill"
    for seed in SEEDS:
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        a = _node(run, store, spill)
        port = int(a.endpoint.rsplit(":", 1)[1])
        client = _client(a)
        _wait_log(a, r"park of session \w+: parked")
        stop_server(a)
        (run / "b").mkdir()
        b = _node(run / "b", store, spill, port=port, FARGPU_PARK_TEST_RESTORE_PAUSE_S="0.5")
        try:
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            time.sleep(random.Random(seed).uniform(0.2, 1.4))
            _kill(_workers(b))
            out, err = client.communicate(timeout=90)
            print(f"restore, seed {seed}: client={out.strip()}")
            assert out.strip() in ("SAME", "ERROR 46"), f"seed {seed}: {out} {err}"
            # a session is lost only when its worker died after the parked state was removed: before it replied
            # (then no parked state is left to resume), or once it was resumed (a live session's worker died)
            if out.strip() != "SAME":
                assert "no parked state" in err or "resumed on" in err, err
            _assert_nothing_left(b, store, spill)
        finally:
            stop_server(b)


def test_node_server_killed_during_a_park_leaves_the_session_parked_or_gone_and_nothing_behind(tmp_path: Path) -> None:
    store, spill = tmp_path / "store", tmp_path / "spill"
    for seed in (0, *SEEDS):  # 0: at once, the upload under way; else up to the commit, after the upload
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        a = _node(run, store, spill, FARGPU_PARK_TEST_COMMIT_DELAY_S="0.4")
        port = int(a.endpoint.rsplit(":", 1)[1])
        client = _client(a)
        _wait_log(a, r"its state is written")
        time.sleep(random.Random(seed).uniform(0.0, 0.3) if seed else 0.0)
        workers = _workers(a)
        a.proc.kill()  # the whole node dies: its agent and its session's worker
        a.proc.wait()
        _kill(workers)
        complete = any(store.rglob("session.json"))
        (run / "b").mkdir()
        # the next node server on this store sweeps what the dead one left (any age, for the test)
        b = _node(run / "b", store, spill, port=port, FARGPU_PARK_ORPHAN_AGE_S="0")
        try:
            out, err = client.communicate("go\n", timeout=90)
            print(f"node kill, seed {seed}: complete={complete} client={out.strip()}")
            assert out.strip() == ("SAME" if complete else "ERROR 46"), f"seed {seed}: {out} {err}"
            _assert_nothing_left(b, store, spill)
        finally:
            stop_server(b)


def test_the_sweep_removes_what_interrupted_parks_left_and_nothing_else(tmp_path: Path) -> None:
    import json

    from fargpu.server.park.directory import DirectoryParkStore
    from fargpu.server.park.node import Parker

    root, work = tmp_path / "store", tmp_path / "work"
    store = DirectoryParkStore(root)
    old = time.time() - 7200
    for obj in ("session.json", "state", "memory", "parking"):  # complete; a marker left behind
        store.put_bytes(f"sessions/done/{obj}", b"{}")
    store.put_bytes("sessions/busy/parking", json.dumps({"started": time.time()}).encode())  # under way
    store.put_bytes("sessions/busy/state", b"s")
    store.put_bytes("sessions/dead/parking", json.dumps({"started": old}).encode())  # its node died mid-park
    store.put_bytes("sessions/dead/state", b"s")
    store.put_bytes("sessions/consumed/memory", b"m")  # a restore that stopped after deleting the descriptor
    (root / "sessions" / "cut").mkdir(parents=True)  # a marker whose write was cut short, long ago
    for name in ("parking", ".parking.manifest.00aa.tmp"):
        (root / "sessions" / "cut" / name).write_text("x")
        os.utime(root / "sessions" / "cut" / name, (old, old))
    (work / "a.park").mkdir(parents=True)
    os.utime(work / "a.park", (old, old))
    (work / "b.restore").mkdir()
    swept = Parker(store, work, {}).sweep(max_age_s=3600)
    assert sorted(swept) == ["consumed", "cut", "dead"]
    assert sorted(store.list("sessions/")) == ["sessions/busy/parking", "sessions/busy/state",
                                               "sessions/done/memory", "sessions/done/session.json",
                                               "sessions/done/state"]
    assert not store.partial("sessions/") and not (root / "sessions" / "cut").exists()
    assert not (work / "a.park").exists() and (work / "b.restore").exists()
