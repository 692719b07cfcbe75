"""Choosing the device backend: `cuda` (the real driver, dlopen'ed by each worker, never linked) or `sim`
(the simulated device, a test double for CI). Discovery never initialises CUDA in the agent process: the
probe runs in a short-lived child, so workers forked later start clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fargpu import paths

DRIVER_CANDIDATES = (
    "/usr/local/nvidia/lib64/libcuda.so.1",
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/lib/libcuda.so.1",
    "/usr/lib/libcuda.so.1",
)

_PROBE = r"""
import ctypes, json, os, sys
lib = ctypes.CDLL(sys.argv[1])
n = ctypes.c_int(0)
r = lib.cuInit(0)
if r == 0:
    r = lib.cuDeviceGetCount(ctypes.byref(n))
version = ""
try:  # the driver's version string, from the NVML library installed beside it
    nvml = ctypes.CDLL(os.path.join(os.path.dirname(sys.argv[1]), "libnvidia-ml.so.1"))
    buf = ctypes.create_string_buffer(96)
    if nvml.nvmlInit_v2() == 0:
        if nvml.nvmlSystemGetDriverVersion(buf, 96) == 0:
            version = buf.value.decode("ascii", "replace")
        nvml.nvmlShutdown()
except OSError:
    pass
print(json.dumps({"result": r, "count": n.value, "driver_version": version}))
"""

SIM_DRIVER_VERSION = "simulated"  # what the simulated device reports as its driver version


@dataclass(frozen=True)
class Backend:
    name: str  # "cuda" or "sim"
    driver: Path
    device_count: int
    driver_version: str = ""  # the driver's version string (NVML's), "" when unknown; clients see it in HELLO_OK

    @property
    def simulated(self) -> bool:
        return self.name == "sim"

    def describe(self) -> str:
        if self.simulated:
            return f"sim (SIMULATED DEVICE: a test double in host memory, not a GPU; {self.driver})"
        return f"cuda ({self.device_count} GPU(s), driver {self.driver})"


def _is_stub(path: Path) -> bool:
    try:
        return path.resolve() == paths.stub_lib().resolve()
    except FileNotFoundError:
        return False


def find_real_driver() -> Path | None:
    env = os.environ.get("FARGPU_CUDA_DRIVER")
    cands = [env] if env else list(DRIVER_CANDIDATES)
    for c in cands:
        p = Path(c)
        if p.exists() and not _is_stub(p):
            return p
    return None


def probe(driver: Path, timeout: float = 60.0) -> tuple[int, str]:
    """Number of devices the driver reports (0 when it cannot initialise) and its version string ("" unknown)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CUDA_VISIBLE_DEVICES_FARGPU")}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(driver)], capture_output=True, text=True, timeout=timeout, env=env
        )
        doc = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return 0, ""
    if doc.get("result") != 0:
        return 0, ""
    return int(doc["count"]), str(doc.get("driver_version", ""))


def select(name: str = "auto") -> Backend:
    if name not in ("auto", "cuda", "sim"):
        raise ValueError(f"unknown backend {name!r}: use auto, cuda or sim")
    if name in ("auto", "cuda"):
        drv = find_real_driver()
        count, version = probe(drv) if drv else (0, "")
        if drv and count > 0:
            return Backend("cuda", drv, count, version)
        if name == "cuda":
            where = drv or "any of " + ", ".join(DRIVER_CANDIDATES)
            raise RuntimeError(
                f"backend cuda: no usable GPU through {where} (set FARGPU_CUDA_DRIVER, or use --backend sim)"
            )
    count = int(os.environ.get("FARGPU_SIM_DEVICES", "1"))
    return Backend("sim", paths.sim_lib(), count, SIM_DRIVER_VERSION)
