"""Acceptance: torch.compile (Inductor generating Triton kernels, which Triton compiles and loads as its own
cubins through the driver API) of a small pointwise + reduction function, at two shapes (the second triggers a
recompile). Device check: each compiled result within rtol 1e-4/atol 1e-4 of eager mode (Triton's libdevice
math and its reduction order differ from ATen's in the last bits).
Native vs remote: compiled result sums rtol 1e-6, the largest difference from eager within 1e-5 absolute, the
number of compiled graphs exact. The runner gives each run fresh Triton and Inductor caches, so the remote run
compiles from scratch."""

from __future__ import annotations

import torch
import torch._dynamo
from _common import emit_values, finish, setup


def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * torch.cos(y) + torch.tanh((x * y).sum(dim=-1, keepdim=True)) + torch.relu(x - y) ** 2


setup()
compiled = torch.compile(f)
g = torch.Generator().manual_seed(5)
checks: dict[str, bool] = {}
values: dict[str, object] = {}
tol: dict[str, dict[str, float]] = {}
for shape in ((1024, 4096), (333, 777)):
    x = torch.randn(*shape, generator=g).cuda()
    y = torch.randn(*shape, generator=g).cuda()
    eager, comp = f(x, y), compiled(x, y)
    tag = f"{shape[0]}x{shape[1]}"
    checks[f"compiled matches eager at {tag}"] = torch.allclose(comp, eager, rtol=1e-4, atol=1e-4)
    values[f"sum_{tag}"] = comp.double().sum().item()
    values[f"max_diff_{tag}"] = (comp - eager).abs().max().item()
    tol[f"sum_{tag}"] = {"rtol": 1e-6}
    tol[f"max_diff_{tag}"] = {"atol": 1e-5}
frames = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
values["unique_graphs"] = frames
print("torch.compile (inductor) of a pointwise + reduction function at two shapes")
emit_values(values, tol)
checks["at least one graph compiled"] = frames >= 1
finish(checks)
