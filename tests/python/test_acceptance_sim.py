"""The acceptance suite's CI part (no GPU): the nvcc acceptance programs, built exactly as bench/acceptance.py
builds them (static and shared cudart), run with the real CUDA runtime on top of fargpu's stub against a node
server on the simulated device. The simulated device executes no user kernel, so these tests prove what it can:
cudart initialises on the stub, the fatbin's kernels are registered and found, copies, memsets, streams and
events move the right bytes, and every launch reaches the device with the right kernel, grid, block, shared
memory and parameter bytes (the sim's launch log), then fails cleanly with "operation not supported". Also the
runner's own logic: output comparison under stated tolerances, and the proof check."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from acceptance_build import build, load_runner, require_nvcc
from e2e_helpers import NodeServer

from fargpu import paths

acc = load_runner()
MODES = ("static", "shared")
PROGRAMS = ("sim_probe", "vector_add", "matmul_tiled", "streams_overlap", "host_callback")
NOT_SUPPORTED = "operation not supported"


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    require_nvcc()
    out = tmp_path_factory.mktemp("acceptance-bin")
    return {(name, mode): build(acc, name, mode, out / f"{name}-{mode}") for name in PROGRAMS for mode in MODES}


def _run(binary: Path, server: NodeServer, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The program as a fargpu client: the stub first on LD_LIBRARY_PATH and preloaded, as on the GPU host."""
    proof = tmp_path / f"proof-{binary.name}.jsonl"
    env = server.client_env(LD_PRELOAD=str(paths.stub_lib()), FARGPU_PROOF_FILE=str(proof))
    res = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return res, proof


def _launches(server: NodeServer) -> list[dict[str, Any]]:
    log = server.launch_log
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _params(rec: dict[str, Any]) -> bytes:
    return bytes.fromhex(str(rec["params"]))


def _explain(res: subprocess.CompletedProcess[str], server: NodeServer) -> str:
    return f"rc {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}\n" \
           f"server log:\n{server.log_text()[-2000:]}"


# ---------------------------------------------------------------------------------------------- the probe


@pytest.mark.parametrize("mode", MODES)
def test_sim_probe_runtime_paths_and_exact_launch_records(programs: dict[tuple[str, str], Path], server: NodeServer,
                                                          tmp_path: Path, mode: str) -> None:
    res, proof = _run(programs[("sim_probe", mode)], server, tmp_path, "--print-pointers")
    why = _explain(res, server)
    out = res.stdout.splitlines()
    assert res.returncode == 0 and out and out[-1] == "PASS", why
    assert "devices 1 current 0" in out, why
    assert "name fargpu simulated device" in out, why
    assert "compute capability 9.0, 132 SMs, warp 32, max threads/block 1024" in out, why
    assert "driver supports this runtime: yes" in out, why
    checks = [ln for ln in out if re.match(r"^\S.*\s(ok|MISMATCH)$", ln)]
    assert len(checks) == 9 and all(ln.endswith(" ok") for ln in checks), why
    launch_lines = [ln for ln in out if ln.startswith("launch ")]
    assert len(launch_lines) == 2 and all(NOT_SUPPORTED in ln for ln in launch_lines), why
    pointer_line = next((ln for ln in out if ln.startswith("pointers ")), "")
    ptr = {k: int(v, 16) for k, v in re.findall(r"(\w)=(0x[0-9a-f]+)", pointer_line)}
    assert set(ptr) == {"a", "b", "c", "m"} and len(set(ptr.values())) == 4 and all(ptr.values()), why

    recs = _launches(server)
    assert len(recs) == 2, recs
    first, second = recs
    assert first["func"] == "_Z11probe_scalePfPKfif"
    assert (first["grid"], first["block"], first["shmem"], first["stream"]) == ([4, 1, 1], [128, 1, 1], 0, 0)
    assert _params(first) == struct.pack("<QQif", ptr["b"], ptr["a"], 512, 2.5)
    assert second["func"] == "_Z11probe_mixedPicids"
    assert (second["grid"], second["block"], second["shmem"]) == ([2, 3, 1], [8, 4, 2], 256)
    assert isinstance(second["stream"], int) and second["stream"] >= 1  # a created stream, not the NULL one
    # out @0, c @8 then 3 zero padding bytes, x @12, d @16, s @24: 26 bytes.
    assert _params(second) == struct.pack("<Qb3xidh", ptr["m"], 5, -77, 1234.75, -3)
    assert all(r["result"] == "CUDA_ERROR_NOT_SUPPORTED" for r in recs)

    ok, problems, _ = acc.check_proof(proof, paths.stub_dir())
    assert ok, problems


# ---------------------------------------------------------------------------------------------- user kernels

# Per program: its kernels, and what its first launch must look like: the kernel, grid, block, dynamic shared
# memory, whether it is on a created stream, the number of leading device pointers, and the trailing scalars
# (struct format and values) of the parameter buffer.
FIRST_LAUNCH: dict[str, dict[str, Any]] = {
    "vector_add": dict(func="_Z10vector_addPKfS0_Pfi", kernels={"_Z10vector_addPKfS0_Pfi"}, grid=[4096, 1, 1],
                       block=[256, 1, 1], shmem=0, created_stream=False, pointers=3, tail=("<i", (1 << 20,))),
    "matmul_tiled": dict(func="_Z12matmul_tiledPKfS0_Pfiii", kernels={"_Z12matmul_tiledPKfS0_Pfiii"},
                         grid=[19, 32, 1], block=[16, 16, 1], shmem=0, created_stream=False, pointers=3,
                         tail=("<iii", (500, 300, 400))),
    "streams_overlap": dict(func="_Z9scale_addPfiff", kernels={"_Z9scale_addPfiff", "_Z7combinePKfS0_Pfi"},
                            grid=[1024, 1, 1],
                            block=[256, 1, 1], shmem=0, created_stream=True, pointers=1,
                            tail=("<iff", (1 << 18, 2.0, 0.5))),
    "host_callback": dict(func="_Z4bumpPiPKi", kernels={"_Z4bumpPiPKi"}, grid=[1, 1, 1], block=[32, 1, 1], shmem=0,
                          created_stream=True, pointers=2, tail=("<", ())),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("program", sorted(FIRST_LAUNCH))
def test_user_kernel_launch_reaches_the_device_and_fails_cleanly(programs: dict[tuple[str, str], Path],
                                                                 server: NodeServer, tmp_path: Path, program: str,
                                                                 mode: str) -> None:
    want = FIRST_LAUNCH[program]
    res, proof = _run(programs[(program, mode)], server, tmp_path)
    why = _explain(res, server)
    fail_lines = [ln for ln in res.stdout.splitlines() if ln.startswith("FAIL ")]
    # The program got through cudart's initialisation, its allocations and copies, and stopped at the first
    # check after the refused launch, naming the error (not a crash, not a hang, not a wrong result).
    assert res.returncode == 1 and len(fail_lines) == 1 and fail_lines[0].endswith(NOT_SUPPORTED), why

    recs = _launches(server)
    assert recs, f"no launch reached the simulated device\n{why}"
    first = recs[0]
    assert first["func"] == want["func"], first
    assert (first["grid"], first["block"], first["shmem"]) == (want["grid"], want["block"], want["shmem"]), first
    assert (first["stream"] >= 1) if want["created_stream"] else (first["stream"] == 0), first
    params = _params(first)
    fmt, values = want["tail"]
    n_ptr = want["pointers"]
    assert len(params) == 8 * n_ptr + struct.calcsize(fmt), first
    pointers = struct.unpack_from(f"<{n_ptr}Q", params)
    assert all(pointers) and len(set(pointers)) == n_ptr, pointers  # real, distinct device addresses
    assert struct.unpack_from(fmt, params, 8 * n_ptr) == values, first
    assert all(r["func"] in want["kernels"] and r["result"] == "CUDA_ERROR_NOT_SUPPORTED" for r in recs), recs

    ok, problems, _ = acc.check_proof(proof, paths.stub_dir())
    assert ok, problems


# ---------------------------------------------------------------------------------------------- the runner


def _python_with(site: Path | None, tmp_path: Path) -> str:
    """An interpreter that sees only the standard library and `site` (no site-packages): what the runner's
    --python finds there is exactly what the test put there."""
    exe = tmp_path / ("python-" + (site.name if site else "bare"))
    pythonpath = f"PYTHONPATH={site} " if site else "PYTHONPATH= "
    exe.write_text(f"#!/bin/sh\n{pythonpath}exec {sys.executable} -S \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def _fake_cudnn_wheel(site: Path, *libs: str) -> Path:
    """nvidia-cudnn-cu13's layout: a namespace package nvidia.cudnn (no __init__.py) with include/ and lib/."""
    pkg = site / "nvidia" / "cudnn"
    (pkg / "include").mkdir(parents=True)
    (pkg / "lib").mkdir()
    for name in libs:
        (pkg / "lib" / name).write_bytes(b"")
    return pkg


def test_runner_builds_every_program_with_both_cudart_modes_and_its_libraries(tmp_path: Path) -> None:
    sources = acc.cuda_sources()
    assert {p.stem for p in sources} >= {*PROGRAMS, "graph_replay", "device_printf", "nvrtc_launch", "cublas_sgemm",
                                         "cublas_gemmex", "cublaslt_matmul", "cufft_transforms", "cudnn_conv"}
    # Programs with a pip= meta line (cuDNN) get their package from --python: here a stand-in wheel that ships
    # only libcudnn.so.9, as nvidia-cudnn-cu13 does.
    pkg = _fake_cudnn_wheel(tmp_path / "site", "libcudnn.so.9", "libcudnn_ops.so.9")
    python = _python_with(tmp_path / "site", tmp_path)
    for src in sources:
        pip = acc.read_meta(src).get("pip")
        for mode in MODES:
            cmd = acc.build_command(src, mode, Path("/tmp/x"), "nvcc", Path("/usr/local/cuda"), python=python)
            assert cmd[cmd.index("-cudart") + 1] == mode and "-no-compress" in cmd
            assert "arch=compute_90,code=sm_90" in cmd and "arch=compute_90,code=compute_90" in cmd
            rpaths = [cmd[i + 3] for i, a in enumerate(cmd) if a == "-Xlinker" and cmd[i + 1] == "-rpath"]
            # never lib64/stubs: libcuda.so.1 comes from the loader; a pip package's lib/ first when there is one
            assert rpaths == ([str(pkg / "lib")] if pip else []) + ["/usr/local/cuda/lib64"]
            assert "--disable-new-dtags" in cmd  # DT_RPATH: also serves libnvrtc's dlopen of its builtins
            if pip:
                assert f"-I{pkg / 'include'}" in cmd and f"-L{pkg / 'lib'}" in cmd
                assert cmd.index(f"-I{pkg / 'include'}") < cmd.index(str(src))
                assert cmd.index(f"-L{pkg / 'lib'}") < cmd.index("-l:libcudnn.so.9")  # only the versioned name
            else:
                assert not any(a.startswith("-l:") for a in cmd)
    cudnn = acc.CUDA_DIR / "cudnn_conv.cpp"
    assert acc.read_meta(cudnn)["pip"] == "nvidia.cudnn:cudnn"
    (pkg / "lib" / "libcudnn.so").write_bytes(b"")  # a development symlink, where a wheel has one
    assert "-lcudnn" in acc.build_command(cudnn, "static", Path("/tmp/x"), "nvcc", Path("/c"), python=python)
    nvrtc = acc.build_command(acc.CUDA_DIR / "nvrtc_launch.cu", "static", Path("/tmp/x"), "nvcc", Path("/c"))
    assert nvrtc[-8:-6] == ["-lnvrtc", "-lcuda"]
    args = acc.parse_args(["--out", "/tmp/o", "--stub-dir", "/s", "--server", "h:1", "--token", "t", "--skip-torch"])
    names = [c.name for c in acc.make_cases(args)]
    assert "nvrtc_launch:driver@static" in names and "nvrtc_launch:runtime@shared" in names
    assert "vector_add@static" in names and not any(n.startswith("torch/") for n in names)
    only = acc.parse_args(["--out", "/o", "--stub-dir", "/s", "--server", "h:1", "--token", "t", "--only", "cufft"])
    assert sorted(c.name for c in acc.make_cases(only)) == ["cufft_transforms@shared", "cufft_transforms@static"]


def test_runner_reports_a_missing_pip_package_as_a_build_failure(tmp_path: Path) -> None:
    """Where --python lacks the package a pip= line names (CI has no nvidia-cudnn), the case is not skipped: it
    fails as a build failure whose first line says which package and which interpreter, and nvcc never runs."""
    cudnn = acc.CUDA_DIR / "cudnn_conv.cpp"
    bare = _python_with(None, tmp_path)
    missing = r"pip package nvidia\.cudnn not found by \S*python-bare \(--python\)"
    with pytest.raises(acc.BuildSetupError, match=missing):
        acc.build_command(cudnn, "static", Path("/tmp/x"), "nvcc", Path("/c"), python=bare)
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    args = acc.parse_args(["--out", str(out), "--stub-dir", "/s", "--server", "h:1", "--token", "t", "--skip-torch",
                           "--only", "cudnn_conv", "--python", bare, "--nvcc", str(tmp_path / "no-nvcc")])
    cases = acc.make_cases(args)
    assert sorted(c.name for c in cases) == ["cudnn_conv@shared", "cudnn_conv@static"]
    acc.build_all(cases, out, args)
    for case in cases:
        assert case.build_error.startswith("cannot build cudnn_conv.cpp: pip package nvidia.cudnn not found by "), \
            case.build_error
        rec = acc.run_case(case, out, args)
        assert not rec["pass"] and rec["reason"] == "build failed" and rec["build_error"] == [case.build_error]
        log = (out / "logs" / f"build-cudnn_conv-{case.cudart}.log").read_text()
        assert log.startswith("cannot build cudnn_conv.cpp") and "no-nvcc" not in log
    # The package is there but without the library the program links.
    _fake_cudnn_wheel(tmp_path / "nolib", "libcudnn_ops.so.9")
    nolib = _python_with(tmp_path / "nolib", tmp_path)
    with pytest.raises(acc.BuildSetupError, match=r"no libcudnn\.so or libcudnn\.so\.N in \S+/nvidia/cudnn/lib"):
        acc.build_command(cudnn, "static", Path("/tmp/x"), "nvcc", Path("/c"), python=nolib)


def test_runner_compares_exactly_or_within_the_stated_tolerance() -> None:
    values = {"values": {"s": 1.0, "top": [1, 2, 3, 4], "n": 7}, "tolerance": {"s": {"rtol": 1e-3},
                                                                             "top": {"max_mismatches": 1}}}
    native = "hello\n" + json.dumps(values) + '\n{"throughput": {"img_per_s": 100.0}}\nPASS\n'
    assert acc.compare_outputs(native, native) == ("identical", [])
    remote = native.replace('"s": 1.0', '"s": 1.0005').replace("[1, 2, 3, 4]", "[1, 2, 9, 4]")
    remote = remote.replace("100.0", "50.0")  # throughput never counts
    assert acc.compare_outputs(native, remote) == ("within_tolerance", [])
    status, diff = acc.compare_outputs(native, remote.replace('"s": 1.0005', '"s": 1.01'))
    assert status == "differ" and diff[0].startswith("s: native 1.0 vs remote 1.01")
    status, diff = acc.compare_outputs(native, remote.replace("[1, 2, 9, 4]", "[1, 8, 9, 4]"))
    assert status == "differ" and "2 of 4 elements differ" in diff[0]
    status, diff = acc.compare_outputs(native, native.replace('"n": 7', '"n": 8'))
    assert status == "differ" and diff == ["n: native 7 != remote 8 (exact)"]
    status, diff = acc.compare_outputs(native, native.replace("hello", "hullo"))
    assert status == "differ" and "-hello" in diff and "+hullo" in diff
    assert acc.parse_output(native).throughput == {"img_per_s": 100.0}


def test_runner_proof_check(tmp_path: Path) -> None:
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    (stub_dir / "libcuda.so.1").write_bytes(b"")
    proof = tmp_path / "proof.jsonl"

    def verdict(*records: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
        proof.write_text("".join(json.dumps(r) + "\n" for r in records))
        return acc.check_proof(proof, stub_dir)  # type: ignore[no-any-return]

    clean = {"pid": 1, "mapped": [str(stub_dir / "libcuda.so.1"),
                                  "/venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so.13"],
             "nvidia_fds": []}
    assert verdict(clean) == (True, [], [])
    ok, problems, _ = verdict(clean, {"pid": 2, "mapped": ["/usr/local/nvidia/lib64/libcuda.so.580.159.04"],
                                      "nvidia_fds": []})
    assert not ok and problems == ["pid 2 mapped the real driver: /usr/local/nvidia/lib64/libcuda.so.580.159.04"]
    ok, problems, _ = verdict({**clean, "nvidia_fds": ["/dev/nvidiactl"]})
    assert not ok and problems == ["pid 1 held a GPU device node open: /dev/nvidiactl"]
    ok, problems, _ = verdict({**clean, "mapped": ["/usr/lib/libnvidia-ptxjitcompiler.so.1"]})
    assert not ok and "driver component" in problems[0]
    ok, _, notes = verdict({**clean, "mapped": ["/usr/local/nvidia/lib64/libnvidia-ml.so.1"]})
    assert ok and notes == ["pid 1 mapped NVML from /usr/local/nvidia/lib64/libnvidia-ml.so.1"]
    proof.write_text("")
    ok, problems, _ = acc.check_proof(proof, stub_dir)
    assert not ok and problems[0].startswith("no proof written")
    os.unlink(proof)
    assert not acc.check_proof(proof, stub_dir)[0]


def test_runner_sums_what_the_clients_sent(tmp_path: Path) -> None:
    proof = tmp_path / "proof.jsonl"
    proof.write_text(json.dumps({"pid": 1, "image_bytes_sent": 4096, "sync_calls_sent": 7}) + "\n"
                     + json.dumps({"pid": 2, "image_bytes_sent": 100, "sync_calls_sent": 3}) + "\nnot json\n")
    assert acc.proof_totals(proof) == (4196, 10)
    assert acc.proof_totals(tmp_path / "missing.jsonl") == (0, 0)


def test_runner_repeats_alternate_the_order_and_report_medians(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--repeat N: each side runs N times, native first on even repetitions and remote first on odd ones (so
    neither side always runs on a GPU the other just warmed), and the throughput is the median of the N runs."""
    script = tmp_path / "bench_case.py"
    script.write_text(
        "import json, os, pathlib\n"
        "side = 'remote' if os.environ.get('FARGPU_SERVER') else 'native'\n"
        "log = pathlib.Path(os.environ['ORDER_LOG'])\n"
        "n = len(log.read_text().split()) if log.exists() else 0\n"
        "log.write_text((log.read_text() if log.exists() else '') + side + ' ')\n"
        "rate = {'native': [100, 300, 200], 'remote': [90, 10, 95]}[side][n // 2]\n"
        "print('same'); print(json.dumps({'throughput': {'img_per_s': rate}}))\n")
    out = tmp_path / "out"
    for sub in ("logs", "proofs", "work"):
        (out / sub).mkdir(parents=True)
    order_log = tmp_path / "order"
    args = acc.parse_args(["--out", str(out), "--stub-dir", str(tmp_path), "--server", "h:1", "--token", "t",
                           "--python", sys.executable, "--repeat", "3"])
    case = acc.Case("torch/bench_case", "torch", "torch", script, [], 60.0)
    monkeypatch.setenv("ORDER_LOG", str(order_log))
    rec = acc.run_case(case, out, args)
    assert order_log.read_text().split() == ["native", "remote", "remote", "native", "native", "remote"]
    assert rec["outputs"] == "identical" and rec["repeat"] == 3
    t = rec["throughput"]
    assert t["native"] == {"img_per_s": 200} and t["remote"] == {"img_per_s": 90}
    assert t["ratio"] == {"img_per_s": 0.45}
    assert t["runs"] == {"native": [{"img_per_s": 100}, {"img_per_s": 300}, {"img_per_s": 200}],
                         "remote": [{"img_per_s": 90}, {"img_per_s": 10}, {"img_per_s": 95}]}
    assert not rec["pass"] and rec["reason"].startswith("proof:")  # no stub was loaded: never a pass


@pytest.mark.parametrize("quick", [False, True])
def test_runner_quick_reaches_both_sides(tmp_path: Path, quick: bool) -> None:
    """--quick must reach the case on both sides (the environment is cleaned of this shell's FARGPU_ variables
    first, which once dropped it, so every "quick" run was a full one)."""
    script = tmp_path / "quick_case.py"
    script.write_text("import os\nprint('quick', os.environ.get('FARGPU_ACCEPTANCE_QUICK'))\n")
    out = tmp_path / "out"
    for sub in ("logs", "proofs", "work"):
        (out / sub).mkdir(parents=True)
    args = acc.parse_args(["--out", str(out), "--stub-dir", str(tmp_path), "--server", "h:1", "--token", "t",
                           "--python", sys.executable] + (["--quick"] if quick else []))
    case = acc.Case("torch/quick_case", "torch", "torch", script, [], 60.0)
    want = "quick 1" if quick else "quick None"
    for side in ("native", "remote"):
        run = acc.run_side(case, side, out, args, tmp_path / f"{side}.jsonl", f"q.{side}")
        assert run.stdout.strip() == want, (side, run.stdout, run.stderr)


def test_checks_beside_the_cases_run_in_the_whole_suite_and_when_selected() -> None:
    """The nvidia-smi check and the module-cache measurement (two extra remote runs) run in a whole-suite run; a
    selection (--only) runs them only when a pattern names them, and --skip-* always skips them."""
    base = ["--out", "o", "--stub-dir", "s", "--server", "h:1", "--token", "t"]
    whole = acc.parse_args(base)
    assert acc.extra_wanted(whole, "module-cache", whole.skip_module_cache)
    assert acc.extra_wanted(whole, "nvidia-smi", whole.skip_smi)
    skipped = acc.parse_args(base + ["--skip-module-cache"])
    assert not acc.extra_wanted(skipped, "module-cache", skipped.skip_module_cache)
    sel = acc.parse_args(base + ["--only", "torch/nccl_one_rank"])
    assert not acc.extra_wanted(sel, "module-cache", sel.skip_module_cache)
    assert not acc.extra_wanted(sel, "nvidia-smi", sel.skip_smi)
    named = acc.parse_args(base + ["--only", "torch/nccl_one_rank", "--only", "module-cache"])
    assert acc.extra_wanted(named, "module-cache", named.skip_module_cache)
    assert not acc.extra_wanted(named, "nvidia-smi", named.skip_smi)
    assert acc.extra_wanted(acc.parse_args(base + ["--only", "nvidia*"]), "nvidia-smi", False)
