"""The generated C and Python are what `python -m codegen` produces from the CUDA 13.0 headers and
codegen/annotations.toml: a stale generated file fails here."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_generated_files_are_fresh() -> None:
    res = subprocess.run([sys.executable, "-m", "codegen", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout
