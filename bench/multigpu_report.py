"""Collects one bench/multigpu_gpu.sh run into OUT/multigpu_gpu.json: when, where (GPUs, driver), which commit, each
part natively and through fargpu (cuMemcpyPeer bandwidth each way, NCCL all-reduce bandwidth per size, DDP training
throughput), their ratios (through fargpu / native), whether the results were right, whether every remote client
proved it never loaded the real driver, and what failed. Prints a short table last.
Usage: multigpu_report.py OUT --stub-dir DIR --backend cuda|sim"""

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

PARTS = ("peer", "allreduce", "ddp")


def load(path: Path) -> dict[str, Any] | None:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
        doc = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def ratio(remote: float | None, native: float | None) -> float | None:
    return round(remote / native, 3) if remote and native else None


def gpu_info() -> dict[str, str]:
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"gpus": "; ".join(q), "driver": q[0].split(",")[-1].strip() if q else ""}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--stub-dir", type=Path, required=True)
    ap.add_argument("--backend", default="cuda")
    a = ap.parse_args()
    out: Path = a.out
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"), "backend": a.backend, **gpu_info(),
        "native": {}, "fargpu": {}, "ratios": {}, "correct": {}, "proof": {}, "failed": [],
    }
    if a.backend == "sim":
        doc["note"] = "dry run on the simulated device: no figure here is a GPU claim"
    for part in PARTS:
        for side in ("native", "fargpu"):
            got = load(out / f"{part}_{side}.json")
            if got is None:
                if (out / f"{part}_{side}.err").exists():
                    doc["failed"].append(f"{part} {side}: no result (see {part}_{side}.err)")
                continue
            if "error" in got:
                doc["failed"].append(f"{part} {side}: {got['error']}")
                continue
            doc[side][part] = got
            doc["correct"][f"{part}_{side}"] = bool(got.get("correct"))
            if not got.get("correct"):
                doc["failed"].append(f"{part} {side}: wrong result")
    nat, rem = doc["native"], doc["fargpu"]
    if "peer" in nat and "peer" in rem:
        for way, v in rem["peer"].get("peer_GBps", {}).items():
            doc["ratios"][f"peer_copy_{way}"] = ratio(v, nat["peer"].get("peer_GBps", {}).get(way))
    if "allreduce" in nat and "allreduce" in rem:
        by_size = {r["mib"]: r for r in nat["allreduce"].get("sizes", [])}
        for r in rem["allreduce"].get("sizes", []):
            n = by_size.get(r["mib"])
            doc["ratios"][f"allreduce_busbw_{r['mib']}MiB"] = ratio(r["busbw_GBps"], n and n["busbw_GBps"])
    if "ddp" in nat and "ddp" in rem:
        doc["ratios"]["ddp_samples_per_s"] = ratio(rem["ddp"].get("samples_per_s"), nat["ddp"].get("samples_per_s"))
    for proof in sorted(out.glob("proof-*.jsonl")):
        good, problems, _notes = check_proof(proof, a.stub_dir)
        doc["proof"][proof.stem.removeprefix("proof-")] = "ok" if good else "; ".join(problems)[:300]
        if not good:
            doc["failed"].append(f"proof {proof.name}: {'; '.join(problems)[:200]}")
    (out / "multigpu_gpu.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"multi-GPU run ({a.backend}, {doc.get('gpus', '?')}), commit {doc['commit']}")
    for k, v in doc["ratios"].items():
        print(f"  {k:32s} fargpu/native {v}")
    print("proof:", json.dumps(doc["proof"]))
    if doc["failed"]:
        print("failed:", *doc["failed"], sep="\n  ")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
