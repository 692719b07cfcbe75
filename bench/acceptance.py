"""The acceptance suite for "unmodified CUDA applications on fargpu", run on the GPU host: builds every program in
tests/acceptance/cuda/ twice (-cudart static and -cudart shared), runs each program and each PyTorch script in
tests/acceptance/torch/ natively and through fargpu (the stub as libcuda.so.1), compares the outputs (exactly,
or value by value within the tolerance the program states), checks each remote client's proof file (the real
driver never mapped, no /dev/nvidia* descriptor), and writes OUT/acceptance.json plus every log under OUT/logs/.

Output contract (tests/acceptance/cuda/acceptance.h says the same for C): ordinary stdout lines must be equal;
a line holding a JSON object with "values" is compared value by value, exactly unless its "tolerance" names
the value ({"rtol": r, "atol": a} for numbers and lists of numbers, {"max_mismatches": n} for lists); a JSON
line with "throughput" ({name: number}) is a measurement, reported with the remote/native ratio.

Meta lines in a program's first 40 lines: `// acceptance: link=-lcublas` (toolkit libraries), `args=a|b` (one run
per argument set), `timeout=S`, and `pip=nvidia.cudnn:cudnn` (a library from a pip package: found with the --python
interpreter, its include/ and lib/ added to the nvcc line and lib/ to the rpath; missing, the build fails and says so).

Usage (a node server must already serve the GPU at --server):
  python3 bench/acceptance.py --out OUT --stub-dir BUILD/stub --server 127.0.0.1:7311 --token T \
      --python /opt/torch/.venv/bin/python [--only PATTERN] [--skip-torch] [--quick]
Exit status 0 when every selected case passed, 1 otherwise."""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import difflib
import fnmatch
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acceptance_smi import nvidia_smi_check
from proof_file import read_proof
from worker_log import log_size, sessions_since, summary

REPO = Path(__file__).resolve().parents[1]
CUDA_DIR = REPO / "tests" / "acceptance" / "cuda"
TORCH_DIR = REPO / "tests" / "acceptance" / "torch"
CUDART_MODES = ("static", "shared")
GENCODE = ["-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_90,code=compute_90"]
# Driver components only the real libcuda loads: mapping one means part of the real driver ran in the client.
DRIVER_PRIVATE_LIBS = ("libnvidia-ptxjitcompiler", "libnvidia-gpucomp", "libnvidia-nvvm", "libnvidia-opencl")
HEAD_LINES = 15
META_RE = re.compile(r"^\s*(?://|#)\s*acceptance:\s*(\w+)\s*=\s*(.*?)\s*$")

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    """One native-vs-remote comparison: a built program in one cudart mode with one argument set, or a script."""

    name: str
    kind: str  # "nvcc" or "torch"
    cudart: str  # "static", "shared", or "torch" (PyTorch's own shared libcudart)
    source: Path
    argv: list[str]
    timeout_s: float
    binary: Path | None = None
    build_error: str = ""


def read_meta(source: Path) -> dict[str, str]:
    """`// acceptance: key=value` (or `# acceptance: ...`) lines of a program or script: link, args, timeout, pip."""
    meta: dict[str, str] = {}
    for line in source.read_text(errors="replace").splitlines()[:40]:
        m = META_RE.match(line)
        if m:
            meta[m.group(1)] = m.group(2)
    return meta


def cuda_sources() -> list[Path]:
    return sorted(p for p in CUDA_DIR.iterdir() if p.suffix in (".cu", ".cpp") and not p.name.startswith("_"))


def torch_scripts() -> list[Path]:
    return sorted(p for p in TORCH_DIR.glob("*.py") if not p.name.startswith("_"))


class BuildSetupError(Exception):
    """A program whose nvcc line cannot be made (a library its meta names is not there); the message is the
    case's build error."""


# Asks an interpreter where a package lives: its __init__'s folder, or a namespace package's first folder
# (nvidia.cudnn has no __init__.py). Prints nothing when the package (or its parent) is not importable.
_PIP_PROBE = """import importlib.util, os, sys
try:
    spec = importlib.util.find_spec(sys.argv[1])
except (ImportError, ValueError):
    spec = None
locs = list(spec.submodule_search_locations or []) if spec else []
if spec and spec.origin and os.path.isfile(spec.origin):
    print(os.path.dirname(spec.origin))
elif locs:
    print(locs[0])
"""


def pip_package_dir(python: str, module: str) -> Path:
    """The folder of pip package `module` (e.g. nvidia.cudnn) as the interpreter `python` (--python) sees it."""
    try:
        res = subprocess.run([python, "-c", _PIP_PROBE, module], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildSetupError(f"cannot ask {python} (--python) where pip package {module} is: {e}") from e
    folder = res.stdout.strip()
    if res.returncode != 0 or not folder or not Path(folder).is_dir():
        why = res.stderr.strip().splitlines()[-1:] if res.returncode != 0 else []
        raise BuildSetupError(f"pip package {module} not found by {python} (--python): install the wheel that "
                              f"provides it into that interpreter" + (f" ({why[0]})" if why else ""))
    return Path(folder)


def pip_link_flag(libdir: Path, lib: str) -> str:
    """-l<lib> when <libdir> has lib<lib>.so; else -l:lib<lib>.so.N for the highest N there (wheels such as
    nvidia-cudnn ship only the versioned name, which -l<lib> does not find)."""
    if (libdir / f"lib{lib}.so").exists():
        return f"-l{lib}"
    pat = re.compile(rf"lib{re.escape(lib)}\.so\.(\d+)")
    found = sorted((int(m.group(1)), p.name) for p in libdir.glob(f"lib{lib}.so.*") if (m := pat.fullmatch(p.name)))
    if not found:
        raise BuildSetupError(f"no lib{lib}.so or lib{lib}.so.N in {libdir}")
    return f"-l:{found[-1][1]}"


def pip_flags(spec: str, python: str) -> tuple[list[str], list[str], list[str]]:
    """`// acceptance: pip=MODULE[:LIB] ...`: each MODULE (a pip package's import name, e.g. nvidia.cudnn) is
    looked up with the --python interpreter; its include/ goes to -I, its lib/ to -L and to the rpath, and LIB
    (e.g. cudnn) is linked from there. Returns (compile flags, link flags, rpath folders); BuildSetupError when a
    package, its lib/ folder or the library is missing."""
    inc: list[str] = []
    link: list[str] = []
    rpaths: list[str] = []
    for item in spec.split():
        module, _, lib = item.partition(":")
        pkg = pip_package_dir(python, module)
        libdir = pkg / "lib"
        if not libdir.is_dir():
            raise BuildSetupError(f"pip package {module} at {pkg} has no lib/ folder")
        if (pkg / "include").is_dir():
            inc.append(f"-I{pkg / 'include'}")
        link.append(f"-L{libdir}")
        if lib:
            link.append(pip_link_flag(libdir, lib))
        rpaths.append(str(libdir))
    return inc, link, rpaths


def build_command(source: Path, mode: str, out: Path, nvcc: str, cuda_home: Path,
                  extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The nvcc line for one program in one cudart mode. Binaries get an rpath to the toolkit's lib64
    (libcudart.so.13, libnvrtc, cuBLAS, cuFFT), never to lib64/stubs: libcuda.so.1 must come from the loader's
    normal search (the real driver natively, the stub first on LD_LIBRARY_PATH remotely). It is an old-style
    DT_RPATH (--disable-new-dtags) so that it also serves the libraries' own dlopen calls (libnvrtc opens
    libnvrtc-builtins that way; a DT_RUNPATH would not apply there). A `pip=` meta line adds a pip package's
    include/, lib/ and library (see pip_flags; `python` is the interpreter that has it, default this one); its
    lib/ comes first in the rpath, so the library is the one the program was compiled against. Raises
    BuildSetupError when such a package is missing."""
    meta = read_meta(source)
    link = shlex.split(meta.get("link", ""))
    pip_inc, pip_link, pip_rpaths = pip_flags(meta["pip"], python or sys.executable) if meta.get("pip") else (
        [], [], [])
    lib64 = cuda_home / "lib64"
    cmd = [nvcc, "-O2", "-std=c++17", "-no-compress", *GENCODE, "-cudart", mode, f"-I{CUDA_DIR}", *pip_inc, *extra,
           "-o", str(out), str(source)]
    if link:
        cmd += [f"-L{lib64}", f"-L{lib64 / 'stubs'}", *link]
    cmd += [*pip_link, "-Xlinker", "--disable-new-dtags"]
    for folder in [*pip_rpaths, str(lib64)]:
        cmd += ["-Xlinker", "-rpath", "-Xlinker", folder]
    return cmd


def make_cases(args: argparse.Namespace) -> list[Case]:
    cases: list[Case] = []
    for src in cuda_sources():
        meta = read_meta(src)
        variants = [v.strip() for v in meta.get("args", "").split("|")] if meta.get("args") else [""]
        for mode in CUDART_MODES:
            for v in variants:
                stem = f"{src.stem}:{v.replace(' ', '_')}" if v else src.stem
                cases.append(Case(f"{stem}@{mode}", "nvcc", mode, src, shlex.split(v),
                                  float(meta.get("timeout", args.timeout))))
    if not args.skip_torch:
        for script in torch_scripts():
            meta = read_meta(script)
            cases.append(Case(f"torch/{script.stem}", "torch", "torch", script, [],
                              float(meta.get("timeout", args.timeout))))
    if args.only:
        pats = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in args.only]
        cases = [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in pats)]
    return cases


def build_all(cases: list[Case], out: Path, args: argparse.Namespace) -> None:
    """Builds each (source, mode) once, in parallel; records the binary or the build error on every case."""
    bindir = out / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    wanted = sorted({(c.source, c.cudart) for c in cases if c.kind == "nvcc"})
    extra = shlex.split(args.nvcc_flags)

    def build(item: tuple[Path, str]) -> tuple[Path, str, Path, str]:
        src, mode = item
        binary = bindir / f"{src.stem}-{mode}"
        try:
            cmd = build_command(src, mode, binary, args.nvcc, Path(args.cuda_home), extra, args.python)
        except BuildSetupError as e:
            err = f"cannot build {src.name}: {e}"
            (out / "logs" / f"build-{src.stem}-{mode}.log").write_text(err + "\n")
            return src, mode, binary, err
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            log = f"$ {shlex.join(cmd)}\n{res.stdout}{res.stderr}"
            err = "" if res.returncode == 0 else (log.strip() or f"nvcc exited {res.returncode}")
        except (OSError, subprocess.TimeoutExpired) as e:
            log = err = f"$ {shlex.join(cmd)}\n{e}"
        (out / "logs" / f"build-{src.stem}-{mode}.log").write_text(log)
        return src, mode, binary, err

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = {(s, m): (b, e) for s, m, b, e in pool.map(build, wanted)}
    for c in cases:
        if c.kind == "nvcc":
            c.binary, c.build_error = results[(c.source, c.cudart)]


# ---------------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class Run:
    rc: int
    duration_s: float
    stdout: str
    stderr: str
    timed_out: bool


def native_env(base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("FARGPU_")}
    env.pop("LD_PRELOAD", None)
    return env


def remote_env(base: dict[str, str], stub_dir: Path, server: str, token: str, proof: Path) -> dict[str, str]:
    """The client environment: the stub first on LD_LIBRARY_PATH and preloaded (torch and some libraries dlopen
    libcuda.so.1 themselves), the endpoint, the token, and a per-run proof file."""
    env = native_env(base)
    env["LD_LIBRARY_PATH"] = f"{stub_dir}:{base.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    env["LD_PRELOAD"] = str(stub_dir / "libcuda.so.1")
    env["FARGPU_SERVER"] = server
    env["FARGPU_TOKEN"] = token
    env["FARGPU_PROOF_FILE"] = str(proof)
    return env


def run_process(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path, log_prefix: Path) -> Run:
    """Runs cmd in its own process group (so a timeout also ends its children, e.g. compile workers), with
    stdout and stderr going to files (no pipe can fill up), and returns what it printed."""
    out_path, err_path = (log_prefix.parent / f"{log_prefix.name}.{ext}" for ext in ("out", "err"))
    start = time.monotonic()
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                    start_new_session=True)
        except OSError as e:
            err.write(f"cannot start {cmd[0]}: {e}\n".encode())
            return Run(127, 0.0, "", f"cannot start {cmd[0]}: {e}", False)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    duration = time.monotonic() - start
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    if timed_out:
        stderr += f"\n[acceptance] killed after the {timeout:.0f} s timeout\n"
    return Run(rc, duration, stdout, stderr, timed_out)


def command_for(case: Case, python: str) -> list[str]:
    if case.kind == "torch":
        return [python, str(case.source), *case.argv]
    assert case.binary is not None
    return [str(case.binary), *case.argv]


# ---------------------------------------------------------------------------------------------------- proof


def proof_totals(proof: Path) -> tuple[int, int]:
    """Sums over the client processes of a run: module/library image bytes sent to the server, and synchronous
    calls sent (each waited a round trip). (0, 0) when there is no readable proof."""
    records, _ = read_proof(proof)
    return (sum(int(rec.get("image_bytes_sent", 0)) for rec in records),
            sum(int(rec.get("sync_calls_sent", 0)) for rec in records))


def check_proof(proof: Path, stub_dir: Path) -> tuple[bool, list[str], list[str]]:
    """Reads the proof lines the stub wrote at exit (one per client process). Fails when none was written (the
    stub never loaded), when any process mapped a libcuda.so* other than the stub, a driver-private library,
    or held a /dev/nvidia* descriptor. CUDA libraries from pip wheels (.../nvidia/cublas/...) are fine. A real
    NVML (libnvidia-ml) outside the stub folder is noted, not failed."""
    notes: list[str] = []
    stub = os.path.realpath(stub_dir / "libcuda.so.1")
    records, problems = read_proof(proof)
    if not records and not problems:
        return False, ["no proof written: the stub was not loaded, or the client did not exit normally"], notes
    for rec in records:
        pid = rec.get("pid", "?")
        for mapped in rec.get("mapped", []):
            path = str(mapped).removesuffix(" (deleted)")
            base = os.path.basename(path)
            if base.startswith("libcuda.so") and os.path.realpath(path) != stub:
                problems.append(f"pid {pid} mapped the real driver: {path}")
            elif base.startswith(DRIVER_PRIVATE_LIBS):
                problems.append(f"pid {pid} mapped a driver component: {path}")
            elif base.startswith("libnvidia-ml") and not os.path.realpath(path).startswith(
                    os.path.realpath(stub_dir) + "/"):
                notes.append(f"pid {pid} mapped NVML from {path}")
        for fd in rec.get("nvidia_fds", []):
            problems.append(f"pid {pid} held a GPU device node open: {fd}")
    return not problems, problems, sorted(set(notes))


# ---------------------------------------------------------------------------------------------------- outputs


@dataclasses.dataclass
class Parsed:
    lines: list[str]
    values: list[Json]
    throughput: dict[str, float]


def parse_output(text: str) -> Parsed:
    parsed = Parsed([], [], {})
    for line in text.splitlines():
        obj: object = None
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
        if isinstance(obj, dict) and isinstance(obj.get("throughput"), dict):
            for k, v in obj["throughput"].items():
                if isinstance(v, int | float):
                    parsed.throughput[str(k)] = float(v)
        elif isinstance(obj, dict) and isinstance(obj.get("values"), dict):
            parsed.values.append(obj)
        else:
            parsed.lines.append(line)
    return parsed


def _close(a: object, b: object, tol: Json) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= float(tol.get("atol", 0.0)) + float(tol.get("rtol", 0.0)) * abs(a)


def compare_value(name: str, a: object, b: object, tol: Json | None) -> str | None:
    """None when remote value b matches native value a under tol (None: exactly), else why not."""
    if tol is None:
        return None if a == b else f"{name}: native {a!r} != remote {b!r} (exact)"
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{name}: length {len(a)} != {len(b)}"
        bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not _close(x, y, tol)]
        if len(bad) <= int(tol.get("max_mismatches", 0)):
            return None
        i = bad[0]
        return f"{name}: {len(bad)} of {len(a)} elements differ beyond {tol} (first [{i}]: {a[i]!r} vs {b[i]!r})"
    if _close(a, b, tol):
        return None
    return f"{name}: native {a!r} vs remote {b!r} beyond {tol}"


def compare_outputs(native: str, remote: str) -> tuple[str, list[str]]:
    """("identical" | "within_tolerance" | "differ", first lines of the differences). Throughput lines never
    count; the tolerance is the one the native run stated."""
    n, r = parse_output(native), parse_output(remote)
    diff: list[str] = []
    if n.lines != r.lines:
        diff += list(difflib.unified_diff(n.lines, r.lines, "native", "remote", lineterm="", n=1))
    if len(n.values) != len(r.values):
        diff.append(f"values lines: native {len(n.values)}, remote {len(r.values)}")
    exact = True
    for nv, rv in zip(n.values, r.values, strict=False):
        tols = nv.get("tolerance") if isinstance(nv.get("tolerance"), dict) else {}
        assert isinstance(tols, dict)
        for key in sorted(set(nv["values"]) | set(rv["values"])):
            if key not in nv["values"] or key not in rv["values"]:
                diff.append(f"{key}: present on one side only")
                continue
            a, b = nv["values"][key], rv["values"][key]
            exact &= a == b
            tol = tols.get(key)
            why = compare_value(key, a, b, tol if isinstance(tol, dict) else None)
            if why:
                diff.append(why)
    if diff:
        return "differ", diff[:HEAD_LINES]
    return ("identical" if exact else "within_tolerance"), []


def head(text: str, n: int = HEAD_LINES) -> list[str]:
    return [ln[:300] for ln in text.splitlines()[:n]]


def tail(text: str, n: int = 5) -> list[str]:
    return [ln[:300] for ln in text.splitlines()[-n:]]


# The stub's per-call table at exit ("  cuMemAlloc_v2   sync  sent  3  cached  0"): long, and never the reason a case
# failed, so it is left out of the excerpt kept in the JSON (the logs keep it).
CALL_TABLE_LINE = re.compile(r"^\s+\S+\s+(sync|async)\s+sent\s+\d+\s+cached\s+\d+\s*$")
SAYS_WHY = re.compile(r"FAIL|[Ee]rror|refused|NOT_SUPPORTED|Traceback|fargpu")


def gist(text: str, n: int = HEAD_LINES) -> list[str]:
    """What a run printed to stderr, for the JSON: without the stub's call table, its first lines, every line that
    says why something failed (up to 40), and its last lines."""
    lines = [ln for ln in text.splitlines() if not CALL_TABLE_LINE.match(ln)]
    if len(lines) <= 2 * n:
        return [ln[:300] for ln in lines]
    middle = [ln[:300] for ln in lines[n:-n] if SAYS_WHY.search(ln)][:40]
    return [ln[:300] for ln in lines[:n]] + ["..."] + middle + ["..."] + [ln[:300] for ln in lines[-n:]]


# ---------------------------------------------------------------------------------------------------- one case


def run_side(case: Case, side: str, out: Path, args: argparse.Namespace, proof: Path, tag: str) -> Run:
    """One run of a case, natively or through fargpu (writing the stub's proof to `proof`)."""
    base = dict(os.environ)
    work = out / "work" / f"{tag}.{side}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = native_env(base) if side == "native" else remote_env(
        base, Path(args.stub_dir).resolve(), args.server, args.token, proof)
    if args.quick:  # set after the FARGPU_ variables of this shell were dropped, so the case sees it
        env["FARGPU_ACCEPTANCE_QUICK"] = "1"
    if side == "remote":
        env["FARGPU_STATS"] = "1"  # the per-call histogram (sent vs answered in the stub) lands in the log
        env.update(kv.split("=", 1) for kv in args.client_env)
    # Fresh compiler caches per run: the remote run must compile (Triton, Inductor) as a cold start would.
    env.update(TRITON_CACHE_DIR=str(work / "triton"), TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return run_process(command_for(case, args.python), env, case.timeout_s, work, out / "logs" / f"{tag}.{side}")


def median_rates(runs: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for r in runs for k in r})
    return {k: round(statistics.median(r[k] for r in runs if k in r), 3) for k in names}


def run_case(case: Case, out: Path, args: argparse.Namespace) -> Json:
    """Runs the case natively and remotely (args.repeat times each, the order alternating so neither side always
    goes first: native first on even repetitions), compares every pair, and reports median throughputs."""
    source = case.source.relative_to(REPO) if case.source.is_relative_to(REPO) else case.source
    rec: Json = {"name": case.name, "kind": case.kind, "cudart": case.cudart, "argv": case.argv,
                 "source": str(source), "build_ok": not case.build_error}
    if case.build_error:
        rec.update({"pass": False, "reason": "build failed", "build_error": head(case.build_error, 25)})
        return rec
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", case.name)
    proof = out / "proofs" / f"{safe}.jsonl"
    proof.unlink(missing_ok=True)
    pairs: list[dict[str, Run]] = []
    workers: list[dict[str, float]] = []  # what the node's workers logged about the remote runs' sessions
    for rep in range(args.repeat):
        tag = safe if args.repeat == 1 else f"{safe}.r{rep + 1}"
        order = ("native", "remote") if rep % 2 == 0 else ("remote", "native")
        pair: dict[str, Run] = {}
        for side in order:
            mark = log_size(args.server_log)
            pair[side] = run_side(case, side, out, args, proof, tag)
            if side == "remote":
                workers += sessions_since(args.server_log, mark)
        pairs.append(pair)
    rates = {side: [parse_output(p[side].stdout).throughput for p in pairs] for side in ("native", "remote")}
    # The reported runs (exit status, outputs, logs): the first failing pair, else the first.
    runs = next((p for p in pairs if p["native"].rc != 0 or p["remote"].rc != 0
                 or compare_outputs(p["native"].stdout, p["remote"].stdout)[0] == "differ"), pairs[0])
    nat, rem = runs["native"], runs["remote"]
    status, diff = compare_outputs(nat.stdout, rem.stdout)
    proof_ok, problems, notes = check_proof(proof, Path(args.stub_dir).resolve())
    image_bytes, sync_calls = proof_totals(proof)
    tn, tr = median_rates(rates["native"]), median_rates(rates["remote"])
    rec.update(
        native_rc=nat.rc, remote_rc=rem.rc, native_timed_out=nat.timed_out, remote_timed_out=rem.timed_out,
        outputs=status, proof_ok=proof_ok, proof_problems=problems, proof_notes=notes,
        native_s=round(nat.duration_s, 3), remote_s=round(rem.duration_s, 3), diff=diff,
        native_stderr=gist(nat.stderr), remote_stderr=gist(rem.stderr),
        remote_stdout_tail=tail(rem.stdout) if rem.rc != 0 else [],
        remote_image_bytes_sent=image_bytes, remote_sync_calls=sync_calls,
    )
    if args.server_log:
        rec["remote_worker"] = summary(workers)  # summed over the remote runs, as the proof totals are
    if tn or tr:
        rec["throughput"] = {"native": tn, "remote": tr,
                             "ratio": {k: round(tr[k] / tn[k], 4) for k in tn if k in tr and tn[k]}}
        if args.repeat > 1:  # medians above; every run here, in repetition order
            rec["throughput"]["runs"] = rates
    rec["repeat"] = args.repeat  # the proof totals above are summed over this many remote runs
    if nat.rc != 0:
        reason = "native timed out" if nat.timed_out else f"native rc {nat.rc}"
    elif rem.rc != 0:
        reason = "remote timed out" if rem.timed_out else f"remote rc {rem.rc}"
    elif status == "differ":
        reason = "output differs"
    elif not proof_ok:
        reason = "proof: " + problems[0]
    else:
        reason = ""
    rec.update({"pass": not reason, "reason": reason})
    return rec


# ---------------------------------------------------------------------------------------------------- report


def smi(query: str) -> str:
    try:
        res = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, env=native_env(dict(os.environ)))
        return res.stdout.strip().splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def print_table(cases: list[Json]) -> None:
    print(f"\n{'case':40} {'native':>7} {'remote':>7} {'outputs':>16} {'proof':>6} {'result':>6}  throughput ratio")
    for c in cases:
        ratio = ", ".join(f"{k} {v:.2f}" for k, v in c.get("throughput", {}).get("ratio", {}).items())
        print(f"{c['name'][:40]:40} {str(c.get('native_rc', '-')):>7} {str(c.get('remote_rc', '-')):>7} "
              f"{c.get('outputs', '-'):>16} {('ok' if c.get('proof_ok') else 'BAD') if 'proof_ok' in c else '-':>6} "
              f"{'pass' if c['pass'] else 'FAIL':>6}  {ratio}")
        if not c["pass"]:
            print(f"{'':42}-> {c['reason']}")
    passed = sum(1 for c in cases if c["pass"])
    print(f"\n{passed} passed, {len(cases) - passed} failed")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (acceptance.json, logs/, bin/)")
    ap.add_argument("--stub-dir", required=True, help="folder holding fargpu's libcuda.so.1")
    ap.add_argument("--server", required=True, help="node server endpoint, HOST:PORT or a unix socket path")
    ap.add_argument("--token", required=True)
    ap.add_argument("--server-log", type=Path, default=None,
                    help="the node server's log: each case's result then says how busy the remote runs kept the "
                         "node's workers (remote_worker)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with torch for the torch scripts, and with the pip packages of pip= meta lines")
    ap.add_argument("--only", action="append", default=[], help="run cases whose name matches (glob or substring)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-smi", action="store_true",
                    help="skip the nvidia-smi check (also skipped under --only unless a pattern matches 'nvidia-smi')")
    ap.add_argument("--skip-module-cache", action="store_true",
                    help="skip the module-cache measurement (two extra remote runs of one case; also skipped under "
                         "--only unless a pattern matches 'module-cache')")
    ap.add_argument("--client-env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in every remote client's environment, e.g. FARGPU_LOG=debug (FARGPU_* are not inherited)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each case per side (order alternating); throughputs reported as medians")
    ap.add_argument("--quick", action="store_true", help="fewer benchmark iterations (FARGPU_ACCEPTANCE_QUICK=1)")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-run timeout in seconds (default 900)")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("--cuda-home", default="/usr/local/cuda")
    ap.add_argument("--nvcc-flags", default="", help="extra nvcc flags, e.g. -I/-L for libraries elsewhere")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 4, help="parallel builds")
    return ap.parse_args(argv)


def extra_wanted(args: argparse.Namespace, name: str, skipped: bool) -> bool:
    """Whether a check beside the cases (the nvidia-smi check, the module-cache measurement) runs: unless skipped,
    in a run of the whole suite, or in a selection (--only) when a pattern matches its name."""
    return not skipped and (not args.only or any(fnmatch.fnmatch(name, p) or p in name for p in args.only))


def module_cache_probe(cases: list[Case], out: Path, args: argparse.Namespace) -> Json:
    """The server's content-addressed module cache, measured: one case run remotely twice in a row before anything
    else (the server starts with an empty cache); the second session should send image hashes, not images."""
    pick = next((c for c in cases if c.kind == "torch" and not c.build_error), None) or next(
        (c for c in cases if not c.build_error), None)
    if pick is None:
        return {}
    sent: list[int] = []
    for i in (1, 2):
        proof = out / "proofs" / f"module-cache-{i}.jsonl"
        proof.unlink(missing_ok=True)
        work = out / "work" / f"module-cache-{i}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = remote_env(dict(os.environ), Path(args.stub_dir).resolve(), args.server, args.token, proof)
        env.update(TRITON_CACHE_DIR=str(work / "triton"), TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
                   FARGPU_ACCEPTANCE_QUICK="1", PYTHONUNBUFFERED="1")
        run_process(command_for(pick, args.python), env, pick.timeout_s, work, out / "logs" / f"module-cache-{i}")
        sent.append(proof_totals(proof)[0])
    print(f"== module cache: {pick.name} sent {sent[0]} image bytes in its first session, {sent[1]} in its second")
    return {"case": pick.name, "first_session_image_bytes": sent[0], "second_session_image_bytes": sent[1]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    for sub in ("logs", "proofs", "work", "bin"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not (Path(args.stub_dir) / "libcuda.so.1").exists():
        print(f"no libcuda.so.1 in --stub-dir {args.stub_dir}", file=sys.stderr)
        return 2
    cases = make_cases(args)
    run_smi = extra_wanted(args, "nvidia-smi", args.skip_smi)
    if not cases and not run_smi:
        print("no case matches", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    print(f"== building {len({(c.source, c.cudart) for c in cases if c.kind == 'nvcc'})} program/mode pairs")
    build_all(cases, out, args)
    cache = module_cache_probe(cases, out, args) if extra_wanted(args, "module-cache", args.skip_module_cache) else {}
    results: list[Json] = []
    for case in cases:
        print(f"== {case.name}", flush=True)
        rec = run_case(case, out, args)
        results.append(rec)
        print(f"   {'pass' if rec['pass'] else 'FAIL: ' + rec['reason']}"
              f" ({rec.get('native_s', 0):.1f} s native, {rec.get('remote_s', 0):.1f} s remote)", flush=True)
    smi_report: Json = {}
    if run_smi:
        print("== nvidia-smi through the NVML shim", flush=True)
        smi_report = nvidia_smi_check(out, Path(args.stub_dir), args.server, args.token, run_process, native_env)
        print(f"   {'pass' if smi_report['pass'] else 'FAIL: ' + '; '.join(smi_report.get('problems', []))[:600]}"
              if smi_report["ran"] else f"   not run: {smi_report['reason']}", flush=True)
    passed = sum(1 for r in results if r["pass"])
    report: Json = {
        "date": started.isoformat(timespec="seconds"),
        "gpu": smi("name"),
        "driver": smi("driver_version"),
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"),
        "server": args.server,
        "stub_dir": str(Path(args.stub_dir).resolve()),
        "python": args.python,
        "selection": {"only": args.only, "skip_torch": args.skip_torch, "quick": args.quick},
        "summary": {"total": len(results), "passed": passed, "failed": len(results) - passed},
        "module_cache": cache,
        "nvidia_smi": smi_report,
        "cases": results,
    }
    (out / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"wrote {out / 'acceptance.json'}")
    smi_ok = not smi_report.get("ran") or smi_report["pass"]
    return 0 if passed == len(results) and smi_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
