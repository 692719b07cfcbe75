"""bench/compat_table.py: the README's compatibility table, generated from the newest acceptance result and
written between the compat-table markers only; --check tells a stale README from a fresh one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat_table", REPO / "bench" / "compat_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compat_table"] = mod
    spec.loader.exec_module(mod)
    return mod


ct = _load()


def _case(name: str, kind: str, cudart: str, ok: bool, reason: str = "", outputs: str = "identical",
          ratio: dict[str, float] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "kind": kind, "cudart": cudart, "pass": ok, "reason": reason,
                         "outputs": outputs}
    if ratio:
        c["throughput"] = {"native": {}, "remote": {}, "ratio": ratio}
    return c


def _report(date: str, cases: list[dict[str, Any]], gpu: str = "NVIDIA H100 80GB HBM3") -> dict[str, Any]:
    return {"date": date, "gpu": gpu, "driver": "580.159.04", "commit": "abc1234", "cases": cases}


SAMPLE = _report("2026-11-24T10:00:00+00:00", [
    _case("vector_add@static", "nvcc", "static", True),
    _case("vector_add@shared", "nvcc", "shared", False, "remote rc 1"),
    _case("nvrtc_launch:driver@static", "nvcc", "static", False, "build failed"),
    _case("nvrtc_launch:driver@shared", "nvcc", "shared", True, outputs="within_tolerance"),
    _case("torch/resnet50_infer", "torch", "torch", True, ratio={"resnet50_fp16_img_per_s": 0.9312}),
    _case("torch/gpt2_forward", "torch", "torch", False, "output differs | argmax"),
])

README = """# Project

Intro text that must survive.

<!-- compat-table:begin -->
old table
<!-- compat-table:end -->

## After
Trailing text that must survive.
"""


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "acceptance-2026-11-24-h100.json").write_text(json.dumps(SAMPLE))
    # Older by date although its name sorts last; and a file that is not an acceptance result at all.
    (results / "acceptance-zz-old.json").write_text(
        json.dumps(_report("2026-11-01T00:00:00+00:00", [_case("old@static", "nvcc", "static", True)], gpu="OLD")))
    (results / "acceptance-broken.json").write_text("{not json")
    (results / "gpu_run-2026-11-23-h100.json").write_text(json.dumps({"date": "2027-01-01"}))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return readme, results


def test_latest_result_is_chosen_by_date_not_name(tree: tuple[Path, Path]) -> None:
    _, results = tree
    latest = ct.latest_result(results)
    assert latest is not None and latest.name == "acceptance-2026-11-24-h100.json"
    assert ct.latest_result(results / "missing") is None


def test_rows_cells_and_heading() -> None:
    block = ct.render(SAMPLE, "bench/results/acceptance-2026-11-24-h100.json")
    lines = block.splitlines()
    assert "**NVIDIA H100 80GB HBM3 · driver 580.159.04 · 2026-11-24** (commit abc1234): 3 of 6 cases pass." in lines
    assert "| vector_add | nvcc | pass | FAIL: remote rc 1 |  |" in lines
    assert "| nvrtc_launch:driver | nvcc | FAIL: build failed | pass (within tolerance) |  |" in lines
    assert "| torch/resnet50_infer | torch | n/a | pass | resnet50_fp16_img_per_s 0.93 |" in lines
    assert "| torch/gpt2_forward | torch | n/a | FAIL: output differs \\| argmax |  |" in lines  # pipe escaped
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| program")]
    assert [r.split(" | ")[0] for r in rows] == [  # nvcc programs first, then torch scripts, each sorted
        "| nvrtc_launch:driver", "| vector_add", "| torch/gpt2_forward", "| torch/resnet50_infer"]
    assert "bench/results/acceptance-2026-11-24-h100.json" in block


def test_module_cache_figure_is_shown_when_measured() -> None:
    assert "Module cache" not in ct.render(SAMPLE, "x.json")
    report = {**SAMPLE, "module_cache": {"case": "torch/matmul_half", "first_session_image_bytes": 12345,
                                         "second_session_image_bytes": 0}}
    assert ("Module cache: `torch/matmul_half` sent 12345 bytes of images in its first session and 0 in its second "
            "(hashes only).") in ct.render(report, "x.json").splitlines()


def test_missing_mode_shows_a_dash() -> None:
    block = ct.render(_report("2026-11-24", [_case("graph_replay@shared", "nvcc", "shared", True)]), "x.json")
    assert "| graph_replay | nvcc | — | pass |  |" in block.splitlines()


def test_update_replaces_only_the_marked_block(tree: tuple[Path, Path]) -> None:
    readme, results = tree
    assert ct.main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    before, rest = text.split(ct.BEGIN)
    block, after = rest.split(ct.END)
    assert before == README.split(ct.BEGIN)[0]
    assert after == README.split(ct.END)[1]
    assert "old table" not in block and "| vector_add | nvcc | pass | FAIL: remote rc 1 |  |" in block
    assert "OLD" not in block  # the older result was not used
    assert "bench/results/acceptance-2026-11-24-h100.json" in block  # named relative to the README
    assert ct.main(["--readme", str(readme), "--results", str(results)]) == 0
    assert readme.read_text() == text  # idempotent


def test_check_tells_stale_from_fresh_and_writes_nothing(tree: tuple[Path, Path]) -> None:
    readme, results = tree
    args = ["--readme", str(readme), "--results", str(results)]
    assert ct.main([*args, "--check"]) == 1
    assert readme.read_text() == README
    assert ct.main(args) == 0
    assert ct.main([*args, "--check"]) == 0
    # A newer result makes the README stale again.
    newer = _report("2026-12-01T00:00:00+00:00", [_case("vector_add@static", "nvcc", "static", False, "native rc 1")])
    (results / "acceptance-2026-12-01.json").write_text(json.dumps(newer))
    assert ct.main([*args, "--check"]) == 1


def test_explicit_json_overrides_the_results_folder(tree: tuple[Path, Path], tmp_path: Path) -> None:
    readme, results = tree
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(_report("2020-01-01", [_case("only@static", "nvcc", "static", True)], gpu="H200")))
    assert ct.main(["--readme", str(readme), "--results", str(results), "--json", str(other)]) == 0
    text = readme.read_text()
    assert "**H200 · driver 580.159.04 · 2020-01-01**" in text and "| only | nvcc | pass | — |  |" in text


def test_missing_markers_or_results_are_errors(tree: tuple[Path, Path], tmp_path: Path) -> None:
    readme, results = tree
    readme.write_text("# no markers here\n")
    assert ct.main(["--readme", str(readme), "--results", str(results)]) == 2
    assert readme.read_text() == "# no markers here\n"
    readme.write_text(README)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ct.main(["--readme", str(readme), "--results", str(empty)]) == 2
    assert readme.read_text() == README


def test_the_repository_readme_table_is_fresh() -> None:
    """README.md's compatibility table is what the newest committed acceptance result gives."""
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(repo / "bench" / "compat_table.py"), "--check"], capture_output=True,
                       text=True, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr


def test_selection_runs_never_become_the_table_and_repeated_runs_add_medians(tree: tuple[Path, Path]) -> None:
    readme, results = tree
    perf = _report("2026-12-02T00:00:00+00:00", [
        {**_case("torch/resnet50_infer", "torch", "torch", True, ratio={"img_per_s": 0.99}), "repeat": 3,
         "throughput": {"native": {"img_per_s": 100.0}, "remote": {"img_per_s": 99.0}, "ratio": {"img_per_s": 0.99},
                        "runs": {"native": [{}, {}, {}], "remote": [{}, {}, {}]}}}])
    perf["selection"] = {"only": ["resnet50"], "skip_torch": False, "quick": False}
    (results / "acceptance-2026-12-02-perf.json").write_text(json.dumps(perf))
    latest = ct.latest_result(results)
    assert latest is not None and latest.name == "acceptance-2026-11-24-h100.json"  # newer, but a selection
    assert ct.main(["--readme", str(readme), "--results", str(results)]) == 0
    lines = readme.read_text().splitlines()
    assert "**NVIDIA H100 80GB HBM3 · driver 580.159.04 · 2026-11-24** (commit abc1234): 3 of 6 cases pass." in lines
    assert ("| torch/resnet50_infer | img_per_s | 100 | 99 | 0.99 | 3 | NVIDIA H100 80GB HBM3, 2026-12-02, abc1234 "
            "(`bench/results/acceptance-2026-12-02-perf.json`) |") in lines
    assert any(ln.startswith("Throughput medians (for each case, its newest repeated run") for ln in lines)
    # A newer repeated run of another case adds its row and keeps resnet50's; a newer run of resnet50 replaces it.
    gpt = _report("2026-12-05T00:00:00+00:00", [
        {**_case("torch/gpt2_forward", "torch", "torch", True), "repeat": 3,
         "throughput": {"native": {"tok_per_s": 300.0}, "remote": {"tok_per_s": 240.0}, "ratio": {"tok_per_s": 0.8},
                        "runs": {"native": [{}, {}, {}], "remote": [{}, {}, {}]}}},
        {**_case("torch/resnet50_infer", "torch", "torch", True), "repeat": 1,
         "throughput": {"native": {"img_per_s": 1.0}, "remote": {"img_per_s": 2.0}, "ratio": {"img_per_s": 2.0}}}],
        gpu="NVIDIA H200")
    (results / "acceptance-2026-12-05-gpt2.json").write_text(json.dumps(gpt))
    assert ct.main(["--readme", str(readme), "--results", str(results)]) == 0
    rows = [ln for ln in readme.read_text().splitlines() if ln.startswith("| torch/")]
    assert [r.split(" | ")[0] for r in rows if r.endswith(") |")] == ["| torch/gpt2_forward", "| torch/resnet50_infer"]
    assert any(r.startswith("| torch/gpt2_forward | tok_per_s | 300 | 240 | 0.80 | 3 | NVIDIA H200, 2026-12-05")
               for r in rows)
    assert any(r.startswith("| torch/resnet50_infer | img_per_s | 100 | 99 | 0.99 | 3 |") for r in rows)


def test_nvidia_smi_line() -> None:
    smi = {"ran": True, "pass": True, "L_shim_rc": 0, "L_identical": True, "plain_shim_rc": 0, "q_shim_rc": 0,
           "q": {"same": 59, "native_fields": 211}, "problems": []}
    lines = ct.render({**SAMPLE, "nvidia_smi": smi}, "x.json").splitlines()
    assert ("nvidia-smi through the NVML shim (pass): `-L` exit 0, identical to native; plain table exit 0 (GPU, bus "
            "id, driver and CUDA version as native); `-q` exit 0, 59 of 211 fields as native (the others mostly N/A: "
            "not visible through the driver API; `-q` is reported, not judged).") in lines
    bad = {**smi, "pass": False, "plain_shim_rc": 255, "problems": ["nvidia-smi (plain): native rc 0, shim rc 255"]}
    assert any(ln.startswith("nvidia-smi through the NVML shim (FAIL: nvidia-smi (plain): native rc 0, shim rc 255)")
               for ln in ct.render({**SAMPLE, "nvidia_smi": bad}, "x.json").splitlines())
    assert "nvidia-smi" not in ct.render(SAMPLE, "x.json")


def test_cases_added_since_the_whole_suite_come_from_the_newest_later_run(tree: tuple[Path, Path]) -> None:
    """A program the whole-suite run lacks is listed from the newest run after it that has it, naming that run;
    programs the suite has, and runs older than the suite, add nothing."""
    readme, results = tree
    older = _report("2026-11-20T00:00:00+00:00", [_case("torch/old_case", "torch", "torch", True)])
    older["selection"] = {"only": ["old_case"]}
    first = _report("2026-12-01T00:00:00+00:00", [
        _case("torch/nccl_one_rank", "torch", "torch", False, "remote rc 1"),
        _case("api_new@static", "nvcc", "static", True), _case("api_new@shared", "nvcc", "shared", True),
        _case("torch/resnet50_infer", "torch", "torch", False, "remote rc 9")])  # in the suite: not listed again
    first["selection"] = {"only": ["nccl", "api_new", "resnet50"]}
    fixed = _report("2026-12-03T00:00:00+00:00", [_case("torch/nccl_one_rank", "torch", "torch", True)], gpu="H200")
    fixed["selection"] = {"only": ["nccl"]}
    for name, data in (("old", older), ("first", first), ("fixed", fixed)):
        (results / f"acceptance-sel-{name}.json").write_text(json.dumps(data))
    assert ct.main(["--readme", str(readme), "--results", str(results)]) == 0
    lines = readme.read_text().splitlines()
    assert "Cases added since that run, from the newest later run that has each:" in lines
    added = lines[lines.index("Cases added since that run, from the newest later run that has each:") + 4:]
    added = added[:next(i for i, ln in enumerate(added) if not ln.startswith("|"))]
    assert added == [
        "| api_new | nvcc | pass | pass |  | NVIDIA H100 80GB HBM3, 2026-12-01, abc1234 "
        "(`bench/results/acceptance-sel-first.json`) |",
        "| torch/nccl_one_rank | torch | n/a | pass |  | H200, 2026-12-03, abc1234 "
        "(`bench/results/acceptance-sel-fixed.json`) |",
    ]
    assert ct.main(["--readme", str(readme), "--results", str(results), "--check"]) == 0
    # Without later runs there is no such table.
    assert "Cases added since" not in ct.render(SAMPLE, "x.json", [], [])
