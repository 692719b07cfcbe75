"""A pool lease's VRAM quota covers all of its sessions on the node, and the pool bounds how many sessions a lease
may hold there (`fargpu pool-manager --max-sessions-per-lease`): a live pool manager, a node on the simulated
device and real stub clients presenting the lease's token, all started at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _live_pool import LivePool
from cuda_ctypes import PRELUDE

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
