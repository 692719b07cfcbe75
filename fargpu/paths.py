"""Where the native artefacts live: the stub's libcuda.so.1, the replay engine, the simulated device, the TLS relay.

Installed wheels carry them in `fargpu/_native/`; FARGPU_NATIVE_DIR overrides that (a CMake build dir)."""

from __future__ import annotations

import os
from pathlib import Path


def native_dir() -> Path:
    override = os.environ.get("FARGPU_NATIVE_DIR")
    if override:
        return Path(override)
    import fargpu

    # An editable install keeps the sources in the checkout and the built libraries in site-packages:
    # look along the package path.
    for base in fargpu.__path__:
        cand = Path(base) / "_native"
        if cand.is_dir():
            return cand
    return Path(__file__).resolve().parent / "_native"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}. Reinstall fargpu (`pip install .`) so the native parts are built, "
            "or point FARGPU_NATIVE_DIR at a CMake build's install dir."
        )
    return path


def stub_dir() -> Path:
    """Folder holding the stub as libcuda.so.1 (put it first on LD_LIBRARY_PATH)."""
    return _require(native_dir() / "stub", "the fargpu libcuda stub folder")


def stub_lib() -> Path:
    return _require(native_dir() / "stub" / "libcuda.so.1", "the fargpu libcuda stub")


def replay_lib() -> Path:
    return _require(native_dir() / "libfargpu_replay.so", "the fargpu replay engine")


def sim_lib() -> Path:
    return _require(native_dir() / "libfargpu_sim.so", "the fargpu simulated device")


def tls_lib() -> Path:
    return _require(native_dir() / "libfargpu_tls.so", "the fargpu TLS relay (libfargpu_tls.so)")
