"""Choosing the device backend: `cuda` (the real driver, dlopen'ed by each worker, never linked) or `sim`
(the simulated device, a test double for CI). Discovery never initialises CUDA in the agent process: the
probe runs in a short-lived child, so workers forked later start clean. `fargpu server` starts that child before
it imports the node server's modules (`start_probe`, from fargpu/entry.py), so that the driver initialises while
they load rather than after; `select` then reads the answer of the probe already under way."""

from __future__ import annotations

import atexit
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
_early: tuple[str, subprocess.Popen[str]] | None = None  # (driver, its probe) started by start_probe, not yet read


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


def _start(driver: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CUDA_VISIBLE_DEVICES_FARGPU")}
    return subprocess.Popen([sys.executable, "-c", _PROBE, str(driver)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _drop_early() -> None:
    """Ends a probe start_probe began that nobody read (another backend was chosen, or the command failed)."""
    global _early
    early, _early = _early, None
    if early is not None:
        early[1].kill()
        early[1].communicate()


def requested_backend(argv: list[str]) -> str:
    """The backend a `fargpu server` command line asks for (--backend, else FARGPU_BACKEND, else auto), read before
    the command parses its options; "" for a request for help."""
    if "--help" in argv:
        return ""
    name = os.environ.get("FARGPU_BACKEND") or "auto"
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--backend="):
            name = arg.partition("=")[2]
    return name


def start_probe(name: str) -> None:
    """Starts the driver probe for backend `name` in the background when it may be the real driver (auto, cuda) and
    one is installed; `select` reads its answer. Never raises: without it, `select` probes as before."""
    global _early
    if name not in ("auto", "cuda") or _early is not None:
        return
    try:
        drv = find_real_driver()
        if drv is not None:
            _early = (str(drv), _start(drv))
            atexit.register(_drop_early)
    except OSError:
        _early = None


def probe(driver: Path, timeout: float = 60.0) -> tuple[int, str]:
    """Number of devices the driver reports (0 when it cannot initialise) and its version string ("" unknown)."""
    global _early
    early, _early = _early, None
    try:
        if early is not None and early[0] == str(driver):
            proc = early[1]  # started early (start_probe): its driver has been initialising meanwhile
        else:
            if early is not None:
                early[1].kill()
                early[1].communicate()
            proc = _start(driver)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return 0, ""
        doc = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError, OSError):
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
    _drop_early()
    count = int(os.environ.get("FARGPU_SIM_DEVICES", "1"))
    return Backend("sim", paths.sim_lib(), count, SIM_DRIVER_VERSION)
