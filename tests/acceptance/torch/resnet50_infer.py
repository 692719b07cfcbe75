"""Acceptance and benchmark: ResNet-50 inference (torchvision.models.resnet50(), random init under a fixed seed,
eval mode, fp16, channels_last), batch 64 of a fixed random input. The last BatchNorm of every residual branch is
set to weight 0.2, so fp16 activations stay in range with random weights (every convolution still shapes the
output). Device check: fp16 logits finite, and within 5e-2 relative Frobenius error of the fp32 model's logits
on the device (TF32 off).
Native vs remote: top-1 class indices (at most 2 of 64 may differ), logit sum and std rtol 1e-2 (identical when
the same kernels run). Throughput: img/s over 30 timed batches after 5 warm-up batches (5 and 2 when quick)."""

from __future__ import annotations

import torch
import torchvision
from _common import emit_throughput, emit_values, finish, iters, seconds_per_iter, setup

setup()
torch.manual_seed(0)
model = torchvision.models.resnet50()
for m in model.modules():
    if isinstance(m, torchvision.models.resnet.Bottleneck):
        torch.nn.init.constant_(m.bn3.weight, 0.2)
model = model.eval().cuda().to(memory_format=torch.channels_last)
g = torch.Generator().manual_seed(1)
x = torch.randn(64, 3, 224, 224, generator=g).cuda().to(memory_format=torch.channels_last)
with torch.inference_mode():
    ref = model(x).float()
model = model.half()  # outside inference mode: parameters must stay ordinary tensors
xh = x.half()
with torch.inference_mode():
    logits = model(xh).float()
rel = ((logits - ref).norm() / ref.norm()).item()
top1 = logits.argmax(dim=1).tolist()
print("resnet50 fp16 channels_last eval, batch 64, 224x224")
emit_values(
    {"top1": top1, "logit_sum": logits.double().sum().item(), "logit_std": logits.std().item()},
    {"top1": {"max_mismatches": 2}, "logit_sum": {"rtol": 1e-2, "atol": 1e-2}, "logit_std": {"rtol": 1e-2}},
)


def infer() -> None:
    with torch.inference_mode():
        model(xh)


sec = seconds_per_iter(infer, warmup=iters(5, 2), timed=iters(30, 5))
emit_throughput(resnet50_fp16_img_per_s=64 / sec)
finish({
    "fp16 logits finite": bool(torch.isfinite(logits).all().item()),
    "fp16 logits within 5e-2 of fp32": rel < 5e-2,
    "top-1 indices in [0, 1000)": all(0 <= t < 1000 for t in top1),
})
