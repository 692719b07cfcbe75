"""bench/transport_report.py, the last step of bench/transport_gpu.sh (the GPU proof run of issue 13): from one
run's files it names every figure `<what>_<transport>_<unit>`, computes the ratios against native and against
the raw floors, picks the TCP stream count that measured best, checks every proof file, and records each part
that failed instead of stopping. Synthetic inputs; the whole script was dry-run with `--backend sim`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from e2e_helpers import REPO


def client(pin: float, pag: float, rtt: float, overlap: float) -> str:
    return json.dumps({"copy_mib": 256, "htod_pinned_GBps": pin, "dtoh_pinned_GBps": pin, "htod_pageable_GBps": pag,
                       "dtoh_pageable_GBps": pag, "sync_rtt_us": rtt, "htod_64b_us": rtt + 2, "dtoh_64b_us": rtt + 3,
                       "overlap_streams_ms": overlap}) + "\n"


def test_report_names_figures_ratios_proofs_and_failures(tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "libcuda.so.1").write_bytes(b"")
    (tmp_path / "floors.json").write_text(json.dumps({"floor_tcp_rtt_us": 20.0, "floor_unix_rtt_us": 8.0,
                                                      "floor_tcp1_GBps": 3.0, "floor_tcp4_GBps": 6.0}))
    (tmp_path / "transport_native.json").write_text(client(50.0, 10.0, 2.0, 100.0))
    (tmp_path / "transport_tcp1.json").write_text(client(2.7, 2.5, 22.0, 300.0))
    (tmp_path / "transport_tcp4.json").write_text(client(5.4, 5.0, 22.0, 200.0))
    (tmp_path / "transport_shm.json").write_text(client(45.0, 12.0, 9.0, 110.0))
    (tmp_path / "transport_unix.err").write_text("boom\n")  # no JSON: a failed part
    (tmp_path / "transport_shm.err").write_text("fargpu: calls sent to the server ...\n"
                                                "  FG_SHM_HTOD                 async sent         12  cached 0\n")
    (tmp_path / "proof-transport-tcp1.jsonl").write_text(json.dumps(
        {"pid": 1, "mapped": [str(stub / "libcuda.so.1")], "nvidia_fds": []}) + "\n")
    (tmp_path / "proof-transport-shm.jsonl").write_text(json.dumps(
        {"pid": 2, "mapped": ["/usr/lib/libcuda.so.1"], "nvidia_fds": ["/dev/nvidia0"]}) + "\n")
    res = subprocess.run([sys.executable, str(REPO / "bench" / "transport_report.py"), str(tmp_path), "--stub-dir",
                          str(stub), "--backend", "sim", "--streams", "1", "4"], capture_output=True, text=True,
                         timeout=60, cwd=REPO / "bench")
    assert res.returncode == 1, res.stdout + res.stderr  # parts failed: said so, the report still written
    doc = json.loads((tmp_path / "transport_gpu.json").read_text())
    f, r = doc["figures"], doc["ratios"]
    assert f["htod_pinned_shm_GBps"] == 45.0 and f["sync_rtt_tcp4_us"] == 22.0 and f["overlap_streams_native_ms"] == 100
    assert r["htod_pinned_shm_vs_native"] == 0.9 and r["htod_pinned_tcp4_vs_floor"] == 0.9
    assert r["sync_rtt_tcp1_vs_floor"] == 1.1 and r["overlap_streams_shm_vs_native"] == 1.1
    assert doc["best_tcp_streams"] == "tcp4"
    assert doc["clients"]["shm"]["ops"] == {"FG_SHM_HTOD": 12} and doc["clients"]["tcp1"]["ops"] == {}
    assert doc["proof"]["transport-tcp1"] == "ok" and "real driver" in doc["proof"]["transport-shm"]
    assert any("transport bench unix" in x for x in doc["failed"])
    assert doc["commit"] and doc["date"] and doc["gpu"].startswith("simulated")
    assert "FAILED PARTS" in res.stdout
