"""PyTorch through each transport (bench/transport_gpu.sh): move a 2 GiB tensor to the GPU and back, and
`model.cuda()` of a large model (a stack of 8192x8192 linear layers, about 2.7 GB of weights, random init: nothing
is downloaded). Prints one JSON object of seconds and GB/s; FARGPU_TORCH_GIB / FARGPU_TORCH_LAYERS shrink it."""

from __future__ import annotations

import json
import os
import time

import torch


def clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def main() -> None:
    gib = float(os.environ.get("FARGPU_TORCH_GIB", "2"))
    layers = int(os.environ.get("FARGPU_TORCH_LAYERS", "10"))
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # context and allocator up before timing
    x = torch.randn(int(gib * (1 << 30)) // 4)
    nbytes = x.numel() * 4
    t0 = clock()
    y = x.cuda()
    htod = clock() - t0
    t0 = clock()
    z = y.cpu()
    dtoh = clock() - t0
    k = 1 << 20
    same = bool(torch.equal(x[:k], z[:k])) and bool(torch.equal(x[-k:], z[-k:]))
    del y, z
    model = torch.nn.Sequential(*[torch.nn.Linear(8192, 8192) for _ in range(layers)])
    mbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    t0 = clock()
    model.cuda()
    to_gpu = clock() - t0
    print(json.dumps({
        "tensor_bytes": nbytes, "tensor_htod_s": round(htod, 4), "tensor_dtoh_s": round(dtoh, 4),
        "tensor_htod_GBps": round(nbytes / htod / 1e9, 3), "tensor_dtoh_GBps": round(nbytes / dtoh / 1e9, 3),
        "tensor_round_trip_equal": same, "model_bytes": mbytes, "model_cuda_s": round(to_gpu, 4),
        "model_cuda_GBps": round(mbytes / to_gpu / 1e9, 3),
    }))


if __name__ == "__main__":
    main()
