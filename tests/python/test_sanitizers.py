"""The C protocol core and the replay engine under ASan + UBSan: scripts/sanitize.sh builds
tests/c/test_protocol.c (shared vectors + mutation fuzzing of the decoders) and tests/c/fuzz_server.c
(fgs_serve on the simulated device fed valid, random and malformed frames; no leak after disconnect) and runs
both. Any sanitizer report, hang or failed check fails this test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed: the sanitizer builds need it")
def test_sanitize_sh() -> None:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "sanitize.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"scripts/sanitize.sh failed (rc {r.returncode}):\n{out[-12000:]}"
    assert "sanitize.sh: all passed" in r.stdout
