"""bench/multigpu_gpu.sh's parts that need no GPU: on a host with fewer than 2 GPUs it stops at once, saying so
(exit 3, a JSON error), and bench/multigpu_report.py turns a run's files into ratios, correctness and failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from e2e_helpers import REPO


def test_the_gpu_script_stops_clearly_without_two_gpus(tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(REPO / "bench" / "multigpu_gpu.sh"), str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "needs a host with at least 2 GPUs" in res.stdout
    assert "needs 2 GPUs" in json.loads((tmp_path / "multigpu_gpu.json").read_text())["error"]


def test_the_report_gives_ratios_and_failures(tmp_path: Path) -> None:
    def put(name: str, doc: dict[str, object]) -> None:
        (tmp_path / name).write_text("noise\n" + json.dumps(doc) + "\n")

    put("peer_native.json", {"peer_GBps": {"0->1": 100.0, "1->0": 80.0}, "correct": True})
    put("peer_fargpu.json", {"peer_GBps": {"0->1": 90.0, "1->0": 80.0}, "correct": True})
    put("allreduce_native.json", {"sizes": [{"mib": 64, "busbw_GBps": 200.0}], "correct": True})
    put("allreduce_fargpu.json", {"sizes": [{"mib": 64, "busbw_GBps": 150.0}], "correct": True})
    put("ddp_native.json", {"samples_per_s": 1000.0, "correct": True})
    put("ddp_fargpu.json", {"samples_per_s": 900.0, "correct": False})
    res = subprocess.run([sys.executable, str(REPO / "bench" / "multigpu_report.py"), str(tmp_path), "--stub-dir",
                          str(tmp_path), "--backend", "sim"], capture_output=True, text=True, timeout=60)
    doc = json.loads((tmp_path / "multigpu_gpu.json").read_text())
    assert doc["ratios"] == {"peer_copy_0->1": 0.9, "peer_copy_1->0": 1.0, "allreduce_busbw_64MiB": 0.75,
                             "ddp_samples_per_s": 0.9}, doc
    assert doc["failed"] == ["ddp fargpu: wrong result"] and res.returncode == 1, res.stdout + res.stderr
