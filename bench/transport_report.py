"""Collects one bench/transport_gpu.sh run into OUT/transport_gpu.json: when, where (GPU, driver), which commit,
the raw transport floors, each client's medians (native, and through fargpu per transport), figures named
`<what>_<transport>_<unit>` (e.g. htod_pinned_shm_GBps), ratios against native and against the floors, whether
each remote client proved it never loaded the real driver, and what failed. Prints a short table last.
Usage: transport_report.py OUT --stub-dir DIR --backend cuda|sim --streams N [N ...]"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acceptance import check_proof  # noqa: E402  (the acceptance runner's proof rule, shared)

COPY = ("htod_pinned_GBps", "dtoh_pinned_GBps", "htod_pageable_GBps", "dtoh_pageable_GBps")
SMALL = ("sync_rtt_us", "htod_64b_us", "dtoh_64b_us")


def load(path: Path) -> dict[str, Any] | None:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
        doc = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


PATH_OPS = ("FG_BULK_HTOD", "FG_BULK_DTOH", "FG_SHM_HTOD", "FG_SHM_DTOH", "FG_SHM_DEVPTR")


def paths_used(err: Path) -> dict[str, int]:
    """Which data paths a client used: the stub's FARGPU_STATS table (printed at exit) counts each op sent."""
    try:
        text = err.read_text(errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] in PATH_OPS and parts[2] == "sent":
            out[parts[0]] = int(parts[3])
    return out


def gpu_info(backend: str) -> tuple[str, str]:
    if backend != "cuda":
        return "simulated device (dry run: no GPU figure)", "simulated"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        name, driver = (s.strip() for s in out.split(",", 1))
        return name, driver
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return "unknown", "unknown"


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--stub-dir", type=Path, required=True)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    a = ap.parse_args()
    out: Path = a.out
    gpu, driver = gpu_info(a.backend)
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "gpu": gpu, "driver": driver,
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"), "backend": a.backend,
        "floors": load(out / "floors.json") or {}, "clients": {}, "figures": {}, "ratios": {}, "proof": {},
        "failed": [],
    }
    transports = [f"tcp{n}" for n in a.streams] + ["unix", "shm"]
    for name in ["native", *transports, "tcp1spin", "shmspin"]:
        res = load(out / f"transport_{name}.json")
        if res is None:
            doc["failed"].append(f"transport bench {name}: see transport_{name}.err")
            continue
        res["ops"] = paths_used(out / f"transport_{name}.err")  # proves which path moved the bytes
        doc["clients"][name] = res
        for key, val in res.items():
            if isinstance(val, int | float) and key.endswith(("GBps", "_us", "_ms")):
                what, _, unit = key.rpartition("_")
                doc["figures"][f"{what}_{name}_{unit}"] = val
    for name in ["native", "tcp", "shm"]:
        res = load(out / f"torch_{name}.json")
        if res is None:
            if (out / f"torch_{name}.err").exists():
                doc["failed"].append(f"torch {name}: see torch_{name}.err")
            continue
        res["ops"] = paths_used(out / f"torch_{name}.err")
        doc["clients"][f"torch_{name}"] = res
        for key in ("tensor_htod_GBps", "tensor_dtoh_GBps", "model_cuda_s"):
            what, _, unit = key.rpartition("_")
            doc["figures"][f"torch_{what}_{name}_{unit}"] = res.get(key)
    f, fl, r = doc["figures"], doc["floors"], doc["ratios"]
    # The default stream count is the one with the best pinned figures (the measurement that chose it).
    tcp = [t for t in transports if t.startswith("tcp") and t in doc["clients"]]
    best = max(tcp, key=lambda t: f.get(f"htod_pinned_{t}_GBps", 0) + f.get(f"dtoh_pinned_{t}_GBps", 0), default="")
    doc["best_tcp_streams"] = best
    for name in transports:
        for key in COPY:
            what = key.removesuffix("_GBps")
            r[f"{what}_{name}_vs_native"] = ratio(f.get(f"{what}_{name}_GBps"), f.get(f"{what}_native_GBps"))
        r[f"overlap_streams_{name}_vs_native"] = ratio(f.get(f"overlap_streams_{name}_ms"),
                                                        f.get("overlap_streams_native_ms"))
    for name in tcp:
        n = name.removeprefix("tcp")
        for key in COPY:
            what = key.removesuffix("_GBps")
            r[f"{what}_{name}_vs_floor"] = ratio(f.get(f"{what}_{name}_GBps"), fl.get(f"floor_tcp{n}_GBps"))
        r[f"sync_rtt_{name}_vs_floor"] = ratio(f.get(f"sync_rtt_{name}_us"), fl.get("floor_tcp_rtt_us"))
    r["sync_rtt_tcp1spin_vs_floor"] = ratio(f.get("sync_rtt_tcp1spin_us"), fl.get("floor_tcp_rtt_us"))
    r["sync_rtt_shmspin_vs_floor"] = ratio(f.get("sync_rtt_shmspin_us"), fl.get("floor_unix_rtt_us"))
    r["sync_rtt_unix_vs_floor"] = ratio(f.get("sync_rtt_unix_us"), fl.get("floor_unix_rtt_us"))
    r["sync_rtt_shm_vs_floor"] = ratio(f.get("sync_rtt_shm_us"), fl.get("floor_unix_rtt_us"))
    for name in ("tcp", "shm"):
        for key in ("tensor_htod", "tensor_dtoh"):
            r[f"torch_{key}_{name}_vs_native"] = ratio(f.get(f"torch_{key}_{name}_GBps"),
                                                       f.get(f"torch_{key}_native_GBps"))
        r[f"torch_model_cuda_{name}_vs_native"] = ratio(f.get(f"torch_model_cuda_{name}_s"),
                                                        f.get("torch_model_cuda_native_s"))
    # bench/small_calls.sh's part: small calls against the ping-pong floors, doorbell on and off, 3 rounds
    try:
        small = json.loads((out / "small" / "small_calls.json").read_text())
    except (OSError, ValueError):
        small = None
    if small is not None:
        doc["small_calls"] = small
        for key, val in (small.get("ratios") or {}).items():
            r[f"small_{key}"] = val
    elif (out / "small_calls.log").exists():
        doc["failed"].append("small calls: see small_calls.log")
    doc["ratios"] = {k: v for k, v in r.items() if v is not None}
    for proof in sorted([*out.glob("proof-*.jsonl"), *out.glob("small/proof-*.jsonl")]):
        ok, problems, _notes = check_proof(proof, a.stub_dir)
        doc["proof"][proof.stem.removeprefix("proof-")] = "ok" if ok else "; ".join(problems)[:300]
        if not ok:
            doc["failed"].append(f"proof {proof.name}: {'; '.join(problems)[:200]}")
    (out / "transport_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{gpu}, driver {driver}, commit {doc['commit']}, backend {a.backend}")
    print(f"{'client':10} {'HtoD pin':>9} {'DtoH pin':>9} {'HtoD pag':>9} {'DtoH pag':>9} {'sync us':>8} "
          f"{'64B h2d':>8} {'overlap ms':>10}")
    for name, res in doc["clients"].items():
        if name.startswith("torch"):
            continue
        vals = [res.get(k) for k in (*COPY, *SMALL[:2])] + [res.get("overlap_streams_ms")]
        print(f"{name:10} " + " ".join(f"{v:>9.2f}" if isinstance(v, float | int) else f"{'-':>9}" for v in vals))
    print("floors:", json.dumps(doc["floors"]))
    if "small_calls" in doc:
        sc = doc["small_calls"]
        print("small calls:", json.dumps({n: (c or {}).get("sync_rtt_us") for n, c in sc["clients"].items()}),
              "floors", json.dumps(sc["floors"]), "targets", json.dumps(sc.get("targets")))
    for name in ("native", "tcp", "shm"):
        if f"torch_{name}" in doc["clients"]:
            print(f"torch {name}:", json.dumps(doc["clients"][f"torch_{name}"]))
    print("proof:", json.dumps(doc["proof"]))
    if doc["failed"]:
        print("FAILED PARTS:", *doc["failed"], sep="\n  ")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
