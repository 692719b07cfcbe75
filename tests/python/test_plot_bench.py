"""bench/plot_gpu_run.py and bench/plot_acceptance.py turn committed GPU runs into their PNGs, as the bench scripts do
after each run; the ratios they draw are checked against the JSON's own figures, and a run with nothing to draw is
refused with its reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO

RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "bench"))
import plot_acceptance  # noqa: E402
import plot_gpu_run  # noqa: E402


def draw(script: str, src: Path, tmp_path: Path) -> bytes:
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    res = subprocess.run([sys.executable, str(REPO / "bench" / script), str(dst)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    png = dst.with_suffix(".png")
    assert res.stdout.strip() == str(png)
    return png.read_bytes()


@pytest.mark.parametrize("name", ["gpu_run-2026-12-04-h200-4d33244.json", "gpu_run-2026-11-23-h100-a090937.json"])
def test_gpu_run_plots_to_a_png(name: str, tmp_path: Path) -> None:
    data = draw("plot_gpu_run.py", RESULTS / name, tmp_path)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 30_000


def test_gpu_run_ratios_are_throughput_fractions() -> None:
    run = json.loads((RESULTS / "gpu_run-2026-12-04-h200-4d33244.json").read_text())
    frac = plot_gpu_run.fraction_of_native(run["micro_native"], run["micro_remote"])
    ratio = run["remote_over_native"]
    # A latency's fraction of native is the inverse of the run's remote/native ratio; a rate's is the ratio itself.
    assert frac["sync round trip"] == pytest.approx(1 / ratio["sync_rtt_us"])
    assert frac["launch rate (4 params)"] == pytest.approx(ratio["launch_rate_4param_per_s"])
    assert frac["256 MiB H->D pinned"] == pytest.approx(ratio["htod_256mib_pinned_gbps"])
    assert len(frac) == 11


def test_acceptance_plots_throughput_ratios(tmp_path: Path) -> None:
    src = RESULTS / "acceptance-2026-12-04-h200-16cfbe4-perf.json"
    ratios = plot_acceptance.throughput_ratios(json.loads(src.read_text()))
    assert ratios["torch/gpt2_forward: gpt2_fp16_tokens_per_s"] == pytest.approx(256079.818 / 270085.364)
    assert "torch/conv2d: conv_fwd_bwd_fp16_img_per_s" not in ratios  # failed remotely: no remote figure
    data = draw("plot_acceptance.py", src, tmp_path)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_a_run_with_nothing_to_draw_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "gpu_run-empty.json"
    empty.write_text(json.dumps({"gpu": "x", "micro_native": {}, "micro_remote": {}}))
    res = subprocess.run([sys.executable, str(REPO / "bench" / "plot_gpu_run.py"), str(empty)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "no native and remote microbenchmarks" in res.stderr
    assert not empty.with_suffix(".png").exists()


def test_transport_run_plots_to_a_png(tmp_path: Path) -> None:
    import plot_transport

    run = {"date": "2026-12-06", "gpu": "test data", "driver": "none", "commit": "x", "backend": "sim",
           "floors": {"floor_tcp1_GBps": 3.0, "floor_tcp_rtt_us": 20.0, "floor_unix_rtt_us": 9.0},
           "figures": {"htod_pinned_native_GBps": 50.0, "dtoh_pinned_native_GBps": 52.0, "sync_rtt_native_us": 2.0,
                       "htod_pinned_tcp4_GBps": 9.0, "dtoh_pageable_tcp4_GBps": 7.0, "sync_rtt_tcp4_us": 25.0,
                       "htod_pinned_shm_GBps": 45.0, "htod_64b_shm_us": 12.0}}
    assert plot_transport.transports(run["figures"]) == ["native", "tcp4", "shm"]  # type: ignore[arg-type]
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "transport_gpu.json"
    src.write_text(json.dumps(run))
    assert draw("plot_transport.py", src, tmp_path)[:8] == b"\x89PNG\r\n\x1a\n"
    src.write_text(json.dumps({"figures": {"sync_rtt_native_us": 2.0}}))
    res = subprocess.run([sys.executable, str(REPO / "bench" / "plot_transport.py"), str(src)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "no copy bandwidth figures" in res.stderr
