"""CI's run of the fault-injection suite (faultsuite.py): every fault kind once, three clients at once, seeded
(FARGPU_FAULT_SEED, default 1; a failure prints the seed and the command that replays it). The JSON summary is
written to $FARGPU_FAULT_OUT when set (else into the test's temporary folder)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faultsuite  # noqa: E402


def test_every_fault_kind_holds(tmp_path: Path) -> None:
    out = Path(os.environ.get("FARGPU_FAULT_OUT") or tmp_path / "faults.json")
    seed = os.environ.get("FARGPU_FAULT_SEED", "1")
    rc = faultsuite.main(["--seed", seed, "--clients", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["faults"]) == set(faultsuite.KINDS) and all(n == 1 for n in result["faults"].values())
    failed = {name: c["failures"][:3] for name, c in result["checks"].items() if c["failed"]}
    assert rc == 0 and result["held"], f"seed {seed} ({result['replay']}): {json.dumps(failed, indent=1)}"
