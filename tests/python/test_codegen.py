"""The generated C and Python are what `python -m codegen` produces from the CUDA 13.0 headers and
codegen/annotations.toml: a stale generated file fails here."""

from __future__ import annotations

import subprocess
import sys

from e2e_helpers import REPO


def test_generated_files_are_fresh() -> None:
    res = subprocess.run([sys.executable, "-m", "codegen", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout


def test_demo_ptx_is_fresh(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """fargpu/generated/test_kernels.ptx is `nvcc -ptx -arch=sm_90 tests/c/kernels/test_kernels.cu`."""
    import shutil

    import pytest

    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not shutil.which(nvcc):
        pytest.skip("nvcc is not installed")
    out = tmp_path / "k.ptx"
    subprocess.run([nvcc, "-ptx", "-arch=sm_90", str(REPO / "tests/c/kernels/test_kernels.cu"), "-o", str(out)],
                   check=True)

    def body(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.startswith("//")]

    assert body(out.read_text()) == body((REPO / "fargpu/generated/test_kernels.ptx").read_text())
