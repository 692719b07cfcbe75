"""Where the seconds from zero nodes to a first kernel go: bench/scale_zero_gpu.py's dry run (the local provider
starting a `fargpu server --backend sim` process, a client through the stub) reports, per round, the seconds to every
stage of the cold start, marked by the pool manager, the node server and the session worker (fargpu/timeline.py)
in one file, and the stages come in the order a lease at zero nodes goes through them. No figure is judged here:
the benchmark reports them. Also: without FARGPU_TIMELINE nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from fargpu import paths, timeline

REPO = Path(__file__).resolve().parents[3]

# Each stage follows the one before it in every cold start (the node's own marks, then the pool's answer, ...).
CHAIN = [
    "lease_request", "lease_waits", "provider_start", "node_spawned", "node_imported", "node_backend", "node_agent",
    "node_listening", "node_pool_target", "node_enrolled", "pool_node_registered", "lease_placed", "client_start",
    "session_hello", "session_authorised", "worker_spawned", "worker_main", "worker_device_open", "worker_hello_ok",
    "client_connected", "context", "first_kernel",
]  # fmt: skip


def test_the_dry_run_reports_each_stage_of_a_cold_start_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = subprocess_env()
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # a node id not enrolled before: the enrolment is a stage too
    env.pop(timeline.ENV, None)
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale_zero_gpu.py"), "--out", str(out), "--stub-dir",
         str(paths.stub_dir()), "--backend", "sim", "--rounds", "1", "--idle-s", "0.5"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "scale_zero_gpu.json").read_text())
    [round_] = result["rounds"]
    stages = round_["breakdown_s"]
    missing = [s for s in CHAIN + ["node_exec", "node_registered"] if stages.get(s) is None]
    assert not missing, (missing, stages)
    at = [stages[s] for s in CHAIN]
    assert at == sorted(at), dict(zip(CHAIN, at, strict=True))
    assert stages["first_kernel"] == pytest.approx(round_["zero_nodes_to_first_kernel_s"], abs=0.002)
    assert stages["lease_placed"] <= round_["zero_nodes_to_lease_placed_s"]
    steps = round_["steps_s"]
    assert steps and all(v >= 0 for v in steps.values())
    assert sum(steps.values()) == pytest.approx(max(stages.values()) - min(stages.values()), abs=0.05)
    assert result["breakdown_median_s"]["first_kernel"] == stages["first_kernel"]
    marks = timeline.read(out / "timeline.log")
    by_pid = {m.pid for m in marks if m.event.startswith(("pool.", "node.", "worker."))}
    assert len(by_pid) >= 3  # the pool manager, the node server and the session worker each wrote their own


def test_no_marks_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "timeline.log"
    monkeypatch.delenv(timeline.ENV, raising=False)
    timeline.mark("node.listening", "n")
    assert not trace.exists() and not timeline.enabled()
    monkeypatch.setenv(timeline.ENV, str(trace))
    timeline.mark("node.listening", "n  with spaces")
    timeline.mark_process_start("node.exec")
    marks = timeline.read(trace)
    assert [m.event for m in marks] == ["node.exec", "node.listening"]  # in time order: the start came first
    assert marks[1].detail == "n with spaces" and {m.pid for m in marks} == {os.getpid()}
