"""The acceptance suite's nvidia-smi check, run on the GPU host: the real nvidia-smi (-L, plain, -q) natively and
with libnvidia-ml.so.1 resolved to fargpu's NVML shim (the stub folder first on LD_LIBRARY_PATH, the node server
on this host serving the GPU). -L must print the same lines; the plain run must exit 0 and show the same GPUs
(index, name, bus id), driver version and CUDA version as the native run, and each GPU's total memory within
MEMORY_RTOL of NVML's (the shim's total is cuMemGetInfo's, which the driver may report below NVML's); every shim
run's proof must show the shim and the stub mapped and no real libcuda, libnvidia-ml or /dev/nvidia* descriptor.
-q is run and reported (exit status, the fields that differ) but not judged: the issue asks for -L and the plain
table.

Used by bench/acceptance.py (the "nvidia_smi" section of acceptance.json)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proof_file import read_proof

Json = dict[str, Any]
RunFn = Callable[[list[str], dict[str, str], float, Path, Path], Any]

GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off|N/A)\s+\|\s+"
                     r"([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)", re.M)
MEMORY = re.compile(r"\d+MiB\s*/\s*(\d+)MiB")
MEMORY_RTOL = 0.02
Q_FIELD = re.compile(r"^(\s*)(\S.*?)\s+:\s?(.*?)\s*$")


def table_fields(text: str) -> Json:
    """What the plain table says about the node: versions, and per GPU row its index, name, bus id and total
    memory (in the order printed)."""
    def first(pattern: str) -> str:
        m = re.search(pattern, text)
        return m.group(1) if m else ""

    rows = GPU_ROW.findall(text)
    totals = MEMORY.findall(text)
    return {
        "driver_version": first(r"Driver Version:\s*(\S+)"),
        "cuda_version": first(r"CUDA Version:\s*(\S+)"),
        "gpus": [{"index": int(i), "name": n.strip(), "bus_id": b.upper(),
                  "memory_total_mib": int(totals[k]) if k < len(totals) else None}
                 for k, (i, n, b) in enumerate(rows)],
    }


def q_fields(text: str) -> dict[str, str]:
    """nvidia-smi -q's "Name    : value" lines keyed by their section path: a line without " : " opens a section
    (e.g. "GPU 00000000:00:06.0", "MIG Mode"), its indentation giving the nesting."""
    fields: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("="):
            continue
        m = Q_FIELD.match(line)
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m:
            fields.setdefault("/".join([k for _, k in stack] + [m.group(2)]), m.group(3))
        else:
            stack.append((indent, line.strip()))
    return fields


def proof_of_shim(proof: Path, stub_dir: Path) -> list[str]:
    """Problems with a shim run's proof: none written, the shim or the stub not mapped, a real libcuda or
    libnvidia-ml mapped, a /dev/nvidia* descriptor held."""
    records, problems = read_proof(proof)
    if not records and not problems:
        return ["no proof written: the stub was not loaded, or nvidia-smi did not exit normally"]
    stub = str(stub_dir.resolve())
    for rec in records:
        pid = rec.get("pid", "?")
        mapped = [str(m).removesuffix(" (deleted)") for m in rec.get("mapped", [])]
        ours = {os.path.basename(m).split(".so")[0] for m in mapped if os.path.realpath(m).startswith(stub + "/")}
        for lib in ("libcuda", "libnvidia-ml"):
            if lib not in ours:
                problems.append(f"pid {pid} did not map fargpu's {lib} from {stub}")
        for m in mapped:
            base = os.path.basename(m)
            if base.startswith(("libcuda.so", "libnvidia-ml")) and not os.path.realpath(m).startswith(stub + "/"):
                problems.append(f"pid {pid} mapped {m}")
        problems += [f"pid {pid} held a GPU device node open: {fd}" for fd in rec.get("nvidia_fds", [])]
    return problems


def nvidia_smi_check(out: Path, stub_dir: Path, server: str, token: str, run: RunFn,
                     native_env: Callable[[dict[str, str]], dict[str, str]]) -> Json:
    """Runs the check; `run` and `native_env` are bench/acceptance.py's process runner and environment filter."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"ran": False, "pass": False, "reason": "nvidia-smi not found"}
    logs = out / "logs"
    base = native_env(dict(os.environ))
    res: Json = {"ran": True, "nvidia_smi": smi}
    texts: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    for name, argv in (("L", ["-L"]), ("plain", []), ("q", ["-q"])):
        for side in ("native", "shim"):
            env = dict(base)
            proof = out / "proofs" / f"nvidia-smi-{name}.jsonl"
            if side == "shim":
                proof.unlink(missing_ok=True)
                env.update(LD_LIBRARY_PATH=f"{stub_dir.resolve()}:{base.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
                           FARGPU_SERVER=server, FARGPU_TOKEN=token, FARGPU_PROOF_FILE=str(proof))
            r = run([smi, *argv], env, 120.0, out / "work", logs / f"nvidia-smi-{name}.{side}")
            texts[f"{name}.{side}"] = (r.rc, r.stdout)
            res[f"{name}_{side}_rc"] = r.rc
            if side == "shim":
                res[f"{name}_shim_stderr"] = [ln[:300] for ln in r.stderr.splitlines()[:20]]
                found = proof_of_shim(proof, stub_dir)
                res[f"{name}_proof_problems"] = found
                if name != "q":
                    problems += [f"nvidia-smi {' '.join(argv) or '(plain)'}: {p}" for p in found]

    (lrc, lnat), (lsrc, lshim) = texts["L.native"], texts["L.shim"]
    res["L_identical"] = lrc == 0 and lsrc == 0 and lnat == lshim and bool(lnat.strip())
    res["L_shim"] = lshim.splitlines()[:8]
    if not res["L_identical"]:
        problems.append(f"nvidia-smi -L: shim rc {lsrc}, output {'identical' if lnat == lshim else 'differs'}")

    (prc, pnat), (psrc, pshim) = texts["plain.native"], texts["plain.shim"]
    fn, fs = table_fields(pnat), table_fields(pshim)
    res.update(plain_native_fields=fn, plain_shim_fields=fs, plain_shim=pshim.splitlines()[:30])
    if prc != 0 or psrc != 0:
        problems.append(f"nvidia-smi (plain): native rc {prc}, shim rc {psrc}")
    elif not fs["gpus"]:
        problems.append("nvidia-smi (plain): the shim run shows no GPU row")
    else:
        problems += [f"nvidia-smi (plain): {k} native {fn[k]!r}, shim {fs[k]!r}" for k in ("driver_version",
                     "cuda_version") if fn[k] != fs[k]]
        if len(fn["gpus"]) != len(fs["gpus"]):
            problems.append(f"nvidia-smi (plain): {len(fn['gpus'])} GPU rows native, {len(fs['gpus'])} shim")
        for gn, gs in zip(fn["gpus"], fs["gpus"], strict=False):
            problems += [f"nvidia-smi (plain): GPU {gn['index']} {k} native {gn[k]!r}, shim {gs[k]!r}"
                         for k in ("index", "name", "bus_id") if gn[k] != gs[k]]
            mn, ms = gn["memory_total_mib"], gs["memory_total_mib"]
            if mn is None or ms is None or abs(ms - mn) > MEMORY_RTOL * mn:
                problems.append(f"nvidia-smi (plain): GPU {gn['index']} total memory native {mn} MiB, shim {ms} MiB")

    qn, qs = q_fields(texts["q.native"][1]), q_fields(texts["q.shim"][1])
    differ = sorted(k for k in qn if k in qs and qn[k] != qs[k])
    res["q"] = {"native_fields": len(qn), "shim_fields": len(qs), "same": sum(1 for k in qn if qs.get(k) == qn[k]),
                "differ": len(differ), "only_native": len(set(qn) - set(qs)),
                "differ_examples": [f"{k}: native {qn[k]!r}, shim {qs[k]!r}" for k in differ[:40]]}
    res["problems"] = problems
    res["pass"] = not problems
    return res
