"""Acceptance: PyTorch on the driver's stream-ordered allocator (PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync,
set here before torch starts): a small MLP trained for a few steps (fp32, TF32 off, fixed seeds), tensors of many
sizes allocated and freed in a loop, a tensor used on a second stream (record_stream), and empty_cache (a pool
trim). CPU checks: the first step's loss against the same step on the CPU, rtol 1e-4; the trained weights' sum
within 1e-3 relative (at least 1e-3 absolute); the loop's checksum exact. Native vs remote: losses and sums
rtol 1e-6, the loop's checksum exact."""

from __future__ import annotations

import os

os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"

import torch  # noqa: E402
from _common import emit_values, finish, setup  # noqa: E402

setup()


def model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(device)


def train(device: str, steps: int) -> tuple[list[float], float]:
    m = model(device)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 256, generator=g).to(device)
        y = torch.randint(0, 10, (64,), generator=g).to(device)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, sum(p.double().sum().item() for p in m.parameters())


backend = torch.cuda.get_allocator_backend()
losses, wsum = train("cuda", 5)
cpu_losses, cpu_wsum = train("cpu", 5)

checksum = 0
for i in range(200):  # many sizes, allocated and freed in stream order
    t = torch.full((1 + (i * 7919) % 50000,), i % 13, dtype=torch.int32, device="cuda")
    checksum += int(t.sum().item())
want = sum((1 + (i * 7919) % 50000) * (i % 13) for i in range(200))

side = torch.cuda.Stream()
a = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    b = a * 2
    b.record_stream(side)
torch.cuda.current_stream().wait_stream(side)
bsum = b.double().sum().item()
del a, b
torch.cuda.synchronize()
torch.cuda.empty_cache()

print("allocator backend", backend)
checks = {
    "the cudaMallocAsync backend is in use": backend == "cudaMallocAsync",
    "first loss vs CPU": abs(losses[0] - cpu_losses[0]) <= 1e-4 * abs(cpu_losses[0]),
    "trained weights vs CPU": abs(wsum - cpu_wsum) <= 1e-3 * max(1.0, abs(cpu_wsum)),
    "loss went down": losses[-1] < losses[0],
    "alloc/free loop checksum": checksum == want,
    "second stream result": bsum == float(2 * sum(range(1 << 20))),
}
emit_values({"losses": losses, "weights_sum": wsum, "loop_checksum": checksum, "side_sum": bsum},
            {"losses": {"rtol": 1e-6}, "weights_sum": {"rtol": 1e-6}})
finish(checks)
