"""Collects one bench/tls_cost_gpu.sh run into OUT/tls_cost_gpu.json: when, where (GPU, driver), which commit, each
client's figures (native; through fargpu over plain TCP and over TLS, 1 and 4 streams), TLS against plain as ratios
(copy bandwidth: TLS/plain, below 1 is a cost; sync round trip and 64 B copies: TLS/plain, above 1 is a cost), which
libssl was there, whether the kernel has kTLS, whether each TLS client really shook hands (its stderr) and each
plain one did not, and whether every remote client proved it never loaded the real driver. Prints a short table.
Usage: tls_cost_report.py OUT --backend cuda|sim"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acceptance import check_proof  # noqa: E402
from transport_report import COPY, SMALL, gpu_info, load, ratio  # noqa: E402

VARIANTS = ("plain1", "tls1", "plain4", "tls4")
HANDSHAKE = "TLS to 127.0.0.1 established"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", default="cuda")
    a = ap.parse_args()
    out: Path = a.out
    gpu, driver = gpu_info(a.backend)

    def text(name: str) -> str:
        try:
            return (out / name).read_text(errors="replace").strip()
        except OSError:
            return ""

    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "gpu": gpu, "driver": driver,
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"), "backend": a.backend, "libssl": text("libssl.txt"),
        "certificates_by": text("certs_by.txt"), "kernel_tls": text("ktls.txt"),
        "clients": {}, "ratios": {}, "tls_used": {}, "proof": {},
        "failed": [],
    }
    for name in ("native", *VARIANTS):
        res = load(out / f"transport_{name}.json")
        if res is None:
            doc["failed"].append(f"transport bench {name}: see transport_{name}.err")
            continue
        doc["clients"][name] = {k: v for k, v in res.items() if k in (*COPY, *SMALL, "copy_mib")}
        if name != "native":
            shook = HANDSHAKE in text(f"transport_{name}.err")
            doc["tls_used"][name] = shook
            if shook != name.startswith("tls"):
                doc["failed"].append(f"{name}: the client {'did not shake' if not shook else 'shook'} hands for TLS")
    c, r = doc["clients"], doc["ratios"]
    for n in ("1", "4"):
        plain, tls = c.get(f"plain{n}", {}), c.get(f"tls{n}", {})
        for key in (*COPY, *SMALL):
            r[f"{key.rsplit('_', 1)[0]}_tls{n}_vs_plain{n}"] = ratio(tls.get(key), plain.get(key))
    doc["ratios"] = {k: v for k, v in r.items() if v is not None}
    for proof in sorted(out.glob("proof-*.jsonl")):
        ok, problems, _notes = check_proof(proof, Path(os.environ.get("FARGPU_NATIVE_DIR", "")) / "stub")
        doc["proof"][proof.stem.removeprefix("proof-")] = "ok" if ok else "; ".join(problems)[:300]
        if not ok:
            doc["failed"].append(f"proof {proof.name}: {'; '.join(problems)[:200]}")
    (out / "tls_cost_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{gpu}, driver {driver}, commit {doc['commit']}, backend {a.backend}, libssl {doc['libssl']}")
    print(f"{'client':8} {'HtoD pin':>9} {'DtoH pin':>9} {'HtoD pag':>9} {'DtoH pag':>9} {'sync us':>8} "
          f"{'64B HtoD':>9} {'64B DtoH':>9}")
    for name, res in c.items():
        cells = [res.get(k) for k in (*COPY, *SMALL)]
        print(f"{name:8} " + " ".join(f"{v:9.2f}" if isinstance(v, int | float) else f"{'-':>9}" for v in cells))
    for k, v in doc["ratios"].items():
        print(f"  {k}: {v}")
    for f in doc["failed"]:
        print(f"FAILED: {f}")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
