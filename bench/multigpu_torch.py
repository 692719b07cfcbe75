"""torch.distributed with NCCL across 2 GPUs, for bench/multigpu_gpu.sh: one process per GPU (spawned here, so
through fargpu each is its own session of the same lease), natively or through fargpu depending on which
libcuda.so.1 the processes load. Modes:
  allreduce  all_reduce of float32 tensors of several sizes (checked: every element is the sum of the ranks'
             values); algorithm and bus bandwidth per size (busbw = bytes * 2(n-1)/n / time, as nccl-tests);
  ddp        DistributedDataParallel training steps of an MLP with random weights (bf16 autocast, SGD); samples/s
             over both GPUs; checked: the parameters are identical on both ranks afterwards.
Rank 0 prints one JSON line. Usage: multigpu_torch.py allreduce|ddp [--quick] [--port P]"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _allreduce(rank: int, quick: bool) -> dict[str, object]:
    sizes_mib = [1, 16, 64] if quick else [1, 16, 64, 256]
    check = torch.full((1 << 20,), float(rank + 1), device="cuda")
    dist.all_reduce(check)
    torch.cuda.synchronize()
    correct = bool((check == float(sum(range(1, WORLD + 1)))).all().item())
    rows = []
    for mib in sizes_mib:
        x = torch.ones(mib << 18, device="cuda")  # float32: MiB * 2^18 elements
        for _ in range(5):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        iters = 20
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        nbytes = x.numel() * 4
        rows.append({"mib": mib, "time_us": round(dt * 1e6, 1), "algbw_GBps": round(nbytes / dt / 1e9, 2),
                     "busbw_GBps": round(nbytes * 2 * (WORLD - 1) / WORLD / dt / 1e9, 2)})
    return {"correct": correct, "sizes": rows}


def _ddp(rank: int, quick: bool) -> dict[str, object]:
    torch.manual_seed(0)
    width, depth, batch = (2048, 4, 32) if quick else (4096, 8, 64)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).cuda()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    g = torch.Generator(device="cuda").manual_seed(1 + rank)
    x = torch.randn(batch, width, device="cuda", generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = ddp(x).float().pow(2).mean()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    steps = 10 if quick else 20
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    digest = torch.stack([p.detach().float().sum() for p in model.parameters()]).sum().reshape(1)
    every = [torch.zeros_like(digest) for _ in range(WORLD)]
    dist.all_gather(every, digest)
    same = all(bool(torch.equal(every[0], e)) for e in every)
    params = sum(p.numel() for p in model.parameters())
    return {"correct": same, "params": params, "batch_per_gpu": batch, "steps": steps,
            "samples_per_s": round(WORLD * batch * steps / dt, 1), "step_ms": round(dt / steps * 1e3, 2)}


def _worker(rank: int, mode: str, quick: bool, port: int) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            device_id=torch.device("cuda", rank))
    try:
        res = _allreduce(rank, quick) if mode == "allreduce" else _ddp(rank, quick)
        if rank == 0:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
            res.update(mode=mode, world=WORLD, torch=torch.__version__, nccl=nccl,
                       gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
            print(json.dumps(res), flush=True)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["allreduce", "ddp"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--port", type=int, default=29517)
    a = ap.parse_args()
    if torch.cuda.device_count() < WORLD:
        print(json.dumps({"error": f"needs {WORLD} GPUs, sees {torch.cuda.device_count()}"}))
        sys.exit(3)
    os.environ.setdefault("NCCL_DEBUG", "WARN")
    mp.spawn(_worker, args=(a.mode, a.quick, a.port), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
