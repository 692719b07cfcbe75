"""Acceptance and benchmark: fp16 and bf16 matrix multiplies (cuBLAS, tensor cores), n x n x n with n = 4096
(2048 with FARGPU_ACCEPTANCE_QUICK=1).
Device check: relative Frobenius error against an fp32 matmul of the same rounded inputs on the device (TF32 off)
below 2e-3 (fp16) and 1e-2 (bf16): the 16-bit output rounding alone gives about 3e-4 and 2e-3.
Native vs remote: output sums rtol 1e-5, the relative errors within 1e-4 absolute. Throughput: TFLOP/s each."""

from __future__ import annotations

import torch
from _common import emit_throughput, emit_values, finish, iters, seconds_per_iter, setup

setup()
n = iters(4096, 2048)
g = torch.Generator().manual_seed(1)
a = torch.randn(n, n, generator=g) / 8
b = torch.randn(n, n, generator=g) / 8
checks: dict[str, bool] = {}
values: dict[str, object] = {}
tol: dict[str, dict[str, float]] = {}
rates: dict[str, float] = {}
for name, dtype, limit in (("fp16", torch.float16, 2e-3), ("bf16", torch.bfloat16, 1e-2)):
    da, db = a.to(dtype).cuda(), b.to(dtype).cuda()
    c = da @ db
    ref = da.float() @ db.float()
    rel = ((c.float() - ref).norm() / ref.norm()).item()
    checks[f"{name} relative error below {limit:g}"] = rel < limit
    values[f"{name}_sum"] = c.double().sum().item()
    values[f"{name}_rel_err"] = rel
    tol[f"{name}_sum"] = {"rtol": 1e-5}
    tol[f"{name}_rel_err"] = {"atol": 1e-4}
    sec = seconds_per_iter(lambda da=da, db=db: da @ db, warmup=iters(5, 2), timed=iters(50, 10))
    rates[f"{name}_tflops"] = 2 * n**3 / sec / 1e12
print(f"matmul {n}x{n}x{n} fp16 and bf16")
emit_values(values, tol)
emit_throughput(**rates)
finish(checks)
