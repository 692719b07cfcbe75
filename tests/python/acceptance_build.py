"""Building the acceptance programs (tests/acceptance/cuda) for the tests that run them on the simulated device:
the acceptance runner (bench/acceptance.py) loaded as a module, the CUDA toolkit found, and programs built with the
runner's own build command."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import pytest
from e2e_helpers import REPO

from fargpu import paths


def load_runner() -> ModuleType:
    """bench/acceptance.py as the module `acceptance`."""
    if str(REPO / "bench") not in sys.path:  # acceptance.py imports its neighbours, as a script does
        sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("acceptance", REPO / "bench" / "acceptance.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["acceptance"] = mod
    spec.loader.exec_module(mod)
    return mod


def find_nvcc() -> tuple[str, Path] | None:
    """nvcc and the toolkit's home (where lib64 is), or None without one."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if not nvcc:
        return None
    home = Path("/usr/local/cuda")
    if not (home / "lib64").exists():
        home = Path(nvcc).resolve().parents[1]
    return nvcc, home


def require_nvcc() -> tuple[str, Path]:
    """find_nvcc's answer, or the calling test skipped."""
    found = find_nvcc()
    if not found:
        pytest.skip("nvcc is needed to build the acceptance programs (CUDA 13.0 toolkit, e.g. the nvidia-cuda-nvcc "
                    "wheel); none on PATH or at /usr/local/cuda/bin")
    return found


def build(acc: ModuleType, name: str, mode: str, binary: Path, extra: Sequence[str] = ()) -> Path:
    """tests/acceptance/cuda/NAME.cu built into binary (cudart `mode`: static or shared); the test fails on an error."""
    nvcc, home = require_nvcc()
    cmd = acc.build_command(acc.CUDA_DIR / f"{name}.cu", mode, binary, nvcc, home, extra=extra)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}{res.stderr}"
    return binary


def build_against_stub(acc: ModuleType, names: Iterable[str], out: Path) -> dict[str, Path]:
    """Static-cudart builds of the named programs into out, linked against the stub as libcuda (the toolkit's
    lib64/stubs may be absent)."""
    require_nvcc()
    link = out / "link"
    link.mkdir()
    os.symlink(paths.stub_dir() / "libcuda.so.1", link / "libcuda.so")
    return {name: build(acc, name, "static", out / name, extra=[f"-L{link}"]) for name in names}
