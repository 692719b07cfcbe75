"""Reading the proof file the stub writes at exit (FARGPU_PROOF_FILE): one JSON object per client process, with
the libraries it had mapped ("mapped"), the /dev/nvidia* descriptors it held ("nvidia_fds") and its traffic
counters. Shared by bench/acceptance.py and bench/acceptance_smi.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_proof(proof: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records in proof, and a problem line for each line that is not a JSON object. No file, or an empty
    one, gives ([], [])."""
    try:
        lines = [ln for ln in proof.read_text().splitlines() if ln.strip()]
    except OSError:
        return [], []
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            problems.append(f"unreadable proof line: {ln[:200]}")
    return records, problems
