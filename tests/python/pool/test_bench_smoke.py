"""The scale benchmark's harness works and its checks hold on a small pool: one pool manager on the embedded
store, and two pool managers sharing a real Redis (placements race across them)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pool_scale", REPO / "bench" / "pool_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pool_scale"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra", [[], ["--store", "redis", "--pool-managers", "2"]], ids=["embedded", "redis-two-managers"]
)
def test_bench_small_run(tmp_path: Path, redis_url: str, extra: list[str]) -> None:
    bench = load_bench()
    out = tmp_path / "result.json"
    if "redis" in extra:
        extra = [*extra, "--redis-url", redis_url]
    rc = bench.main(
        ["--nodes", "12", "--cycles", "300", "--clients", "24", "--hold-ms", "5", "--out", str(out), *extra]
    )
    result = json.loads(out.read_text())
    assert rc == 0 and result["ok"], result
    assert result["created"] + result["rejected_503"] == 300 and result["created"] > 0
    assert result["double_booking_violations"] == [] and result["lost_leases"] == [] and result["audits"] > 0
    assert result["placement_latency_ms"]["server"]["p50"] > 0
    assert result["config"]["pool_managers"] == (2 if "redis" in extra else 1)


def test_bench_sweep_detects_over_capacity() -> None:
    bench = load_bench()
    res = bench.Results()
    res.holds = [
        (0.0, 2.0, "n", 0, 6 * bench.GiB),
        (1.0, 3.0, "n", 0, 6 * bench.GiB),
        (3.0, 4.0, "n", 0, 4 * bench.GiB),
    ]
    over, peak = bench._sweep_max_held(res, {("n", 0): 10 * bench.GiB})
    assert len(over) == 1 and peak == pytest.approx(1.2)
    res.holds = [(0.0, 1.0, "n", 0, 6 * bench.GiB), (1.0, 3.0, "n", 0, 4 * bench.GiB)]
    assert bench._sweep_max_held(res, {("n", 0): 10 * bench.GiB}) == ([], pytest.approx(0.6))
