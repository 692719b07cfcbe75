"""Acceptance: NCCL through PyTorch's distributed package on one GPU (a process group of one rank, backend nccl,
its rendezvous in an in-memory store): NCCL's initialisation (its driver calls through cuGetProcAddress, its buffers,
streams and events), then all_reduce (sum and max), broadcast, all_gather_into_tensor and reduce_scatter_tensor of
fp32 tensors, and a barrier. With one rank every collective's result is known exactly, so each is checked against
it; native and remote must print the same. It shows which driver calls and private-table slots NCCL makes, in the
node's and the stub's logs, on a machine with one GPU (several GPUs: bench/multigpu_gpu.sh)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from _common import finish, setup

setup()
torch.cuda.set_device(0)
dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=torch.device("cuda", 0))
g = torch.Generator().manual_seed(7)
base = torch.randn(1 << 20, generator=g)
x = base.to("cuda")

checks: dict[str, bool] = {}
y = x.clone()
dist.all_reduce(y, op=dist.ReduceOp.SUM)
checks["all_reduce sum of one rank is the tensor"] = torch.equal(y.cpu(), base)
y = x.clone()
dist.all_reduce(y, op=dist.ReduceOp.MAX)
checks["all_reduce max of one rank is the tensor"] = torch.equal(y.cpu(), base)
z = x * 2
dist.broadcast(z, src=0)
checks["broadcast from rank 0"] = torch.equal(z.cpu(), base * 2)
out = torch.empty(x.numel(), device="cuda")
dist.all_gather_into_tensor(out, x)
checks["all_gather of one rank"] = torch.equal(out.cpu(), base)
rs = torch.empty(x.numel(), device="cuda")
dist.reduce_scatter_tensor(rs, x)
checks["reduce_scatter of one rank"] = torch.equal(rs.cpu(), base)
dist.barrier()
torch.cuda.synchronize()
checks["barrier"] = True
print(f"nccl {'.'.join(map(str, torch.cuda.nccl.version()))} one rank, {x.numel()} floats")
dist.destroy_process_group()
finish(checks)
