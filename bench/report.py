"""Combine a GPU-host run's outputs (bench/gpu_run.sh) into one JSON result with date, GPU, driver and
commit, the native/remote ratios, and the proof that remote clients never loaded the real driver; print a
short table. Usage: python3 bench/report.py OUT --native-rc N --remote-rc N --diff-rc N"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
from pathlib import Path


def _smi(query: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
        return out.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _load(p: Path) -> dict[str, float]:
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--native-rc", type=int, required=True)
    ap.add_argument("--remote-rc", type=int, required=True)
    ap.add_argument("--diff-rc", type=int, required=True)
    a = ap.parse_args()
    native, remote = _load(a.out / "micro_native.json"), _load(a.out / "micro_remote.json")
    floor = _load(a.out / "pingpong.json")
    proofs = [json.loads(line) for line in (a.out / "proof.jsonl").read_text().splitlines()] \
        if (a.out / "proof.jsonl").exists() else []
    clean = bool(proofs) and all(
        not p["nvidia_fds"] and all("fargpu" in m or "/stub/" in m for m in p["mapped"]) for p in proofs)
    ratios = {k: remote[k] / native[k] for k in native if k in remote and native[k]}
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": _smi("name"),
        "driver": _smi("driver_version"),
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"),
        "driver_api_test": {"native_rc": a.native_rc, "remote_rc": a.remote_rc, "outputs_match": a.diff_rc == 0},
        "remote_clients_proven_free_of_real_driver": clean,
        "proofs": proofs,
        "micro_native": native,
        "micro_remote": remote,
        "remote_over_native": ratios,
        "transport_floor": floor,
        "checks": {
            "launch_rate_ge_70pct_native": ratios.get("launch_rate_empty_per_s", 0) >= 0.7,
            "sync_rtt_le_2x_tcp_pingpong": bool(remote and floor)
            and remote["sync_rtt_us"] <= 2 * floor["tcp_pingpong_64b_us"],
        },
    }
    (a.out / "gpu_run.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'figure':34} {'native':>12} {'fargpu':>12} {'ratio':>8}")
    for k in native:
        print(f"{k:34} {native[k]:12.3f} {remote.get(k, float('nan')):12.3f} {ratios.get(k, float('nan')):8.3f}")
    print("floor:", floor, "| driver test match:", a.diff_rc == 0, "| proof clean:", clean)
    print("checks:", result["checks"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
