"""The acceptance runner's report of how busy a case's remote runs kept the node's workers (bench/worker_log.py):
each worker logs a line when its session ends, and the runner sums the lines a case's remote runs added to the
node server's log. End to end with the real stub, node server and worker on the simulated device."""

from __future__ import annotations

import sys
from pathlib import Path

from acceptance_build import load_runner
from e2e_helpers import NodeServer

from fargpu import paths

acc = load_runner()
import worker_log  # noqa: E402  (bench/, put on the path by load_runner)

CLIENT = r'''
import ctypes, os
if os.environ.get("FARGPU_SERVER"):  # remote: through the stub; natively (no GPU in CI) the same output
    cu = ctypes.CDLL("libcuda.so.1")
    assert cu.cuInit(0) == 0
    n = ctypes.c_int()
    assert cu.cuDeviceGetCount(ctypes.byref(n)) == 0 and n.value >= 1
    ctx = ctypes.c_void_p()
    assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0 and cu.cuCtxSetCurrent(ctx) == 0
    assert cu.cuCtxSynchronize() == 0
print("done")
'''


def test_each_case_reports_how_busy_its_remote_runs_kept_the_workers(tmp_path: Path, server: NodeServer) -> None:
    script = tmp_path / "worker_case.py"
    script.write_text(CLIENT)
    out = tmp_path / "out"
    for sub in ("logs", "proofs", "work"):
        (out / sub).mkdir(parents=True)
    args = acc.parse_args(["--out", str(out), "--stub-dir", str(paths.stub_dir()), "--server", server.endpoint,
                           "--token", server.token, "--python", sys.executable, "--repeat", "2",
                           "--server-log", str(server.log)])
    rec = acc.run_case(acc.Case("torch/worker_case", "torch", "torch", script, [], 60.0), out, args)
    assert rec["remote_rc"] == 0 and rec["outputs"] == "identical", rec
    w = rec["remote_worker"]
    assert w["sessions"] == 2, w  # one session per remote run
    assert w["records"] >= 2 * 4 and w["frames"] >= 2, w  # cuInit's handshake aside: retain, set, sync at least
    assert 0 < w["busy_s"] <= w["connected_s"] and 0 < w["busy_share"] <= 1, w


def test_lines_are_read_from_the_mark_and_summed(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    line = "fargpu-worker[s]: served {} records in {} frames; replaying them took {} s of the {} s connected (x%)\n"
    log.write_text(line.format(999, 9, "9.0", "9.0"))
    mark = worker_log.log_size(log)
    with log.open("a") as f:
        f.write("something else\n" + line.format(10, 4, "0.250000", "1.000000") + line.format(30, 6, "0.5", "1.5"))
    got = worker_log.sessions_since(log, mark, wait_s=0)
    assert got == [{"records": 10, "frames": 4, "busy_s": 0.25, "connected_s": 1.0},
                   {"records": 30, "frames": 6, "busy_s": 0.5, "connected_s": 1.5}]
    assert worker_log.summary(got) == {"sessions": 2, "records": 40, "frames": 10, "busy_s": 0.75,
                                       "connected_s": 2.5, "busy_share": 0.3}
    assert worker_log.sessions_since(log, worker_log.log_size(log), wait_s=0.2) == []
    assert worker_log.sessions_since(None, 0) == [] and worker_log.summary([]) == {}
    assert worker_log.log_size(tmp_path / "missing.log") == 0
