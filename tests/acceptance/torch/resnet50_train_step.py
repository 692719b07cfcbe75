"""Acceptance and benchmark: ResNet-50 training under bf16 autocast (torchvision.models.resnet50(), random init
under a fixed seed, train mode, channels_last, batch 32 of fixed random images and labels). One SGD step
(lr 0.05, momentum 0.9), then one Adam step (lr 1e-4), each on the same batch. Device checks: every loss finite,
the SGD step lowers the loss on its batch, and the Adam step changes it.
Native vs remote: loss before rtol 1e-3, losses after each step rtol 1e-2 (backward kernels may use atomics).
Throughput: training img/s (forward + backward + SGD step) over 10 timed steps after 2 warm-up steps (3 and 1
when quick)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from _common import emit_throughput, emit_values, finish, iters, seconds_per_iter, setup

setup()
torch.manual_seed(0)
model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last).train()
g = torch.Generator().manual_seed(1)
x = torch.randn(32, 3, 224, 224, generator=g).cuda().to(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (32,), generator=g).cuda()


def loss_of_batch() -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return F.cross_entropy(model(x), y)


def step(opt: torch.optim.Optimizer) -> float:
    opt.zero_grad(set_to_none=True)
    loss = loss_of_batch()
    loss.backward()
    opt.step()
    return loss.item()


sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
adam = torch.optim.Adam(model.parameters(), lr=1e-4)
loss_before = step(sgd)
loss_after_sgd = step(adam)  # the loss of the SGD-updated model, then an Adam step
with torch.no_grad():
    loss_after_adam = loss_of_batch().item()
print("resnet50 bf16 autocast training, batch 32: SGD step, then Adam step")
emit_values(
    {"loss_before": round(loss_before, 5), "loss_after_sgd": round(loss_after_sgd, 5),
     "loss_after_adam": round(loss_after_adam, 5)},
    {"loss_before": {"rtol": 1e-3}, "loss_after_sgd": {"rtol": 1e-2}, "loss_after_adam": {"rtol": 1e-2}},
)
sec = seconds_per_iter(lambda: step(sgd), warmup=iters(2, 1), timed=iters(10, 3))
emit_throughput(resnet50_bf16_train_img_per_s=32 / sec)
finish({
    "losses finite": all(math.isfinite(v) for v in (loss_before, loss_after_sgd, loss_after_adam)),
    "SGD step lowered the loss": loss_after_sgd < loss_before,
    "Adam step changed the loss": loss_after_adam != loss_after_sgd,
})
