"""PyTorch through each transport (bench/transport_gpu.sh): move a 2 GiB tensor to the GPU and back, and
`model.cuda()` of a large model (a stack of 8192x8192 linear layers, about 2.7 GB of weights, random init: nothing
is downloaded). Prints one JSON object of seconds and GB/s; FARGPU_TORCH_GIB / FARGPU_TORCH_LAYERS shrink it."""

from __future__ import annotations

import json
import os
import time

import torch


def timed(fn: object) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    gib = float(os.environ.get("FARGPU_TORCH_GIB", "2"))
    layers = int(os.environ.get("FARGPU_TORCH_LAYERS", "10"))
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # context and allocator up before timing
    x = torch.randn(int(gib * (1 << 30)) // 4)
    nbytes = x.numel() * 4
    box: dict[str, torch.Tensor] = {}
    htod = timed(lambda: box.__setitem__("y", x.cuda()))
    dtoh = timed(lambda: box.__setitem__("z", box["y"].cpu()))
    same = bool(torch.equal(x[:1 << 20], box["z"][: 1 << 20])) and bool(torch.equal(x[-(1 << 20):], box["z"][-(1 << 20):]))
    del box
    model = torch.nn.Sequential(*[torch.nn.Linear(8192, 8192) for _ in range(layers)])
    mbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    to_gpu = timed(lambda: model.cuda())
    print(json.dumps({
        "tensor_bytes": nbytes, "tensor_htod_s": round(htod, 4), "tensor_dtoh_s": round(dtoh, 4),
        "tensor_htod_GBps": round(nbytes / htod / 1e9, 3), "tensor_dtoh_GBps": round(nbytes / dtoh / 1e9, 3),
        "tensor_round_trip_equal": same, "model_bytes": mbytes, "model_cuda_s": round(to_gpu, 4),
        "model_cuda_GBps": round(mbytes / to_gpu / 1e9, 3),
    }))


if __name__ == "__main__":
    main()
