"""A live pool manager, a node on the simulated device and real stub clients presenting lease tokens: a lease's VRAM
quota covers all of its sessions on the node, and the pool bounds how many sessions a lease may hold there
(`fargpu pool-manager --max-sessions-per-lease`); three half-GiB leases take turns on a 1 GiB node; a drained node
takes sessions again once undrained."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from _live_pool import NODE_ID, LivePool, wait_for
from cuda_ctypes import PRELUDE, TAKE_TURNS

from fargpu import paths

MiB = 1 << 20
HOLD = PRELUDE + r'''
ctx0()
r, p = alloc(int(sys.argv[1]))
print("ALLOC", r, flush=True)
sys.stdin.readline()
'''


def test_pool_lease_quota_and_session_bound_cover_all_its_sessions(tmp_path: Path) -> None:
    pool = LivePool.start(tmp_path, store_args=["--memory-only"], pool_args=["--max-sessions-per-lease", "3"])
    procs: list[subprocess.Popen[str]] = []
    try:
        lease = pool.lease(vram="64M")
        endpoint = lease["endpoints"][0].removeprefix("tcp://")
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(paths.stub_dir()), "FARGPU_SERVER": endpoint,
               "FARGPU_TOKEN": lease["token"]}
        for _ in range(4):  # four sessions at once under one 64 MiB lease, 24 MiB each
            procs.append(subprocess.Popen([sys.executable, "-P", "-c", HOLD, str(24 * MiB)], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, cwd="/"))
        results = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            results.append(int(line[1]) if line[:1] == ["ALLOC"] else None)
        # One session is refused (the pool allows 3), and of the three, only two fit 64 MiB together.
        assert sorted(results, key=lambda r: -1 if r is None else r) == [None, 0, 0, 2], results
    finally:
        errs = []
        for p in procs:
            _, err = p.communicate("go\n", timeout=30)
            errs.append(err)
        pool.stop()
    assert any("already has 3 session(s) on this node" in e for e in errs), errs




def test_three_half_gib_leases_take_turns_on_a_one_gib_node(tmp_path: Path) -> None:
    # The pool books 3 x 512 MiB on 1 GiB (overcommit 2); the node keeps what is resident within 1 GiB by paging
    # out the least recently used idle session whenever another one needs the room. None fails.
    pool = LivePool.start(tmp_path, store_args=["--memory-only"], pool_args=["--overcommit", "2"],
                          node_env={"FARGPU_SIM_MEM_BYTES": str(1 << 30)})
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(3):
            lease = pool.lease(vram="512M")
            env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(paths.stub_dir()),
                   "FARGPU_SERVER": lease["endpoints"][0].removeprefix("tcp://"), "FARGPU_TOKEN": lease["token"]}
            procs.append(subprocess.Popen([sys.executable, "-P", "-c", TAKE_TURNS], env=env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"))
        for rnd in range(1, 4):
            for p in procs:
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write("go\n")
                p.stdin.flush()
                line = p.stdout.readline().strip()
                assert line == f"DONE {rnd}", line + (p.stderr.read() if p.stderr else "") + pool.logs()[-3000:]
        assert (tmp_path / "node.log").read_text(errors="replace").count("made room for session") >= 3
    finally:
        for p in procs:
            p.communicate("", timeout=30)
        pool.stop()


def test_undrain_lets_a_drained_node_take_sessions_again(tmp_path: Path) -> None:
    pool = LivePool.start(tmp_path, store_args=["--memory-only"])
    try:
        lease = pool.lease(vram="64M")
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(paths.stub_dir()),
               "FARGPU_SERVER": lease["endpoints"][0].removeprefix("tcp://"), "FARGPU_TOKEN": lease["token"]}
        client = [sys.executable, "-P", "-c", PRELUDE + "ctx0(); r, p = alloc(1 << 20); print('ALLOC', r)"]

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(client, env=env, capture_output=True, text=True, timeout=60, cwd="/")

        assert pool.admin_post(f"/v1/admin/nodes/{NODE_ID}/drain").status_code == 200
        wait_for(lambda: "draining" in run().stderr, "the node to refuse new sessions")
        assert pool.admin_post(f"/v1/admin/nodes/{NODE_ID}/undrain").status_code == 200
        res = wait_for(lambda: (r := run()).returncode == 0 and r, "the node to take sessions again")
        assert res.stdout.strip() == "ALLOC 0", res.stdout + res.stderr
        # and it stays up: its heartbeats no longer say draining
        time.sleep(1.5)
        assert next(n for n in pool.get("/v1/nodes") if n["node_id"] == NODE_ID)["state"] == "up"
    finally:
        pool.stop()
