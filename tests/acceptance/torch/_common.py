"""Shared helpers for the PyTorch acceptance scripts: deterministic settings, the output contract with
bench/acceptance.py (plain lines compared exactly; a {"values", "tolerance"} JSON line compared value by value; a
{"throughput"} JSON line reported as a measurement), timing, and the closing PASS/FAIL."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

QUICK = os.environ.get("FARGPU_ACCEPTANCE_QUICK") == "1"


def setup() -> None:
    """Deterministic kernels where torch offers them. Call before the first CUDA operation (cuBLAS reads its
    workspace setting when the first handle is created)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def iters(full: int, quick: int) -> int:
    return quick if QUICK else full


def emit_values(values: dict[str, object], tolerance: dict[str, dict[str, float]] | None = None) -> None:
    """Values the runner compares native vs remote: exactly, unless tolerance names the value."""
    print(json.dumps({"values": values, "tolerance": tolerance or {}}), flush=True)


def emit_throughput(**rates: float) -> None:
    print(json.dumps({"throughput": {k: round(v, 3) for k, v in rates.items()}}), flush=True)


def seconds_per_iter(fn: Callable[[], object], warmup: int, timed: int) -> float:
    """Mean wall time of fn over `timed` calls after `warmup` calls, the device synchronised around the timing."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(timed):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / timed


def finish(checks: dict[str, bool]) -> None:
    """Prints each check and PASS/FAIL; exits 1 when any check failed."""
    for name, ok in checks.items():
        print(f"check {name}: {'ok' if ok else 'FAILED'}")
    ok = all(checks.values())
    print("PASS" if ok else "FAIL", flush=True)
    sys.exit(0 if ok else 1)
