"""Acceptance: everyday tensor operations on the device, each checked against the same operation on the CPU:
elementwise math, an fp32 matmul (TF32 off), softmax, a sort, topk, cumsum, integer arithmetic, indexing and
masking, and the device's Philox RNG under a fixed seed.
CPU checks: allclose with rtol 1e-5/atol 1e-5 (elementwise, softmax), rtol 1e-4/atol 1e-3 (matmul, cumsum);
exact for sort, topk indices, integer and index results; the masked sum within 1e-5 relative.
Native vs remote: float sums rtol 1e-6; integers, sorted values, indices and the RNG sum exact."""

from __future__ import annotations

import torch
from _common import emit_values, finish, setup

setup()
g = torch.Generator().manual_seed(0)
a = torch.randn(1024, 1024, generator=g)
b = torch.randn(1024, 1024, generator=g)
ints = torch.randint(0, 1000, (1 << 20,), generator=g)
perm = torch.randperm(1024, generator=g)
da, db, dints, dperm = a.cuda(), b.cuda(), ints.cuda(), perm.cuda()

ew = da.exp() * db.tanh() + da.sin() / (1 + db * db)
mm = da @ db
sm = torch.softmax(da, dim=1)
sv, si = da[0].sort()
tk = da.topk(5, dim=1).indices
cs = da.cumsum(dim=0)
isum = int((dints * 3 + 7).sum().item())
gathered = da[dperm][:, dperm[:16]]
masked = torch.where(da > 0.5, da, torch.zeros_like(da)).sum()
torch.cuda.manual_seed(1234)
rng = torch.rand(1 << 20, device="cuda")
rng_again = torch.rand(4, device="cuda")
torch.cuda.manual_seed(1234)
rng_repeat = torch.rand(1 << 20, device="cuda")

cpu_masked = torch.where(a > 0.5, a, torch.zeros_like(a)).double().sum().item()
checks = {
    "elementwise vs CPU": torch.allclose(ew.cpu(), a.exp() * b.tanh() + a.sin() / (1 + b * b), rtol=1e-5, atol=1e-5),
    "fp32 matmul vs CPU": torch.allclose(mm.cpu(), a @ b, rtol=1e-4, atol=1e-3),
    "softmax vs CPU": torch.allclose(sm.cpu(), torch.softmax(a, dim=1), rtol=1e-5, atol=1e-5),
    "sort vs CPU": torch.equal(sv.cpu(), a[0].sort().values) and torch.equal(si.cpu(), a[0].sort().indices),
    "topk indices vs CPU": torch.equal(tk.cpu(), a.topk(5, dim=1).indices),
    "cumsum vs CPU": torch.allclose(cs.cpu(), a.cumsum(dim=0), rtol=1e-4, atol=1e-3),
    "integer sum vs CPU": isum == int((ints * 3 + 7).sum().item()),
    "gather vs CPU": torch.equal(gathered.cpu(), a[perm][:, perm[:16]]),
    "masked sum vs CPU": abs(masked.item() - cpu_masked) <= 1e-5 * abs(cpu_masked),
    "rng repeats under the same seed": torch.equal(rng, rng_repeat),
    "rng in [0, 1)": bool(((rng >= 0) & (rng < 1)).all().item()),
}
print("tensor ops on 1024x1024 fp32, 2^20 int64, 2^20 rng draws")
emit_values(
    {
        "elementwise_sum": ew.double().sum().item(),
        "matmul_sum": mm.double().sum().item(),
        "softmax_row0_max": sm[0].max().item(),
        "sorted_first": sv[:5].tolist(),
        "sorted_index_first": si[:5].tolist(),
        "topk_row0": tk[0].tolist(),
        "cumsum_last_row_sum": cs[-1].double().sum().item(),
        "int_sum": isum,
        "gathered_sum": gathered.double().sum().item(),
        "masked_sum": masked.item(),
        "rng_sum": rng.double().sum().item(),
        "rng_next": rng_again.tolist(),
    },
    {
        "elementwise_sum": {"rtol": 1e-6},
        "matmul_sum": {"rtol": 1e-6},
        "softmax_row0_max": {"rtol": 1e-6},
        "cumsum_last_row_sum": {"rtol": 1e-6},
        "gathered_sum": {"rtol": 1e-6},
        "masked_sum": {"rtol": 1e-6},
    },
)
finish(checks)
