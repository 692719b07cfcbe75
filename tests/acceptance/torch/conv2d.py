"""Acceptance and benchmark: cuDNN convolution forward and backward (torch.backends.cudnn.deterministic=True,
benchmark off, TF32 off). A 3x3 Conv2d 64 -> 128 channels on 8 x 64 x 56 x 56 in fp32 is checked against the CPU
(output, input gradient, weight gradient, bias gradient: allclose rtol 1e-4, atol 1e-3 after scaling by the
largest magnitude); the same convolution in fp16 with channels_last is checked against the fp32 device result
(relative Frobenius error below 5e-3).
Native vs remote: sums rtol 1e-5 (fp32) and 1e-3 (fp16). Throughput: fp16 channels_last forward+backward, img/s
at batch 32."""

from __future__ import annotations

import torch
from _common import emit_throughput, emit_values, finish, iters, seconds_per_iter, setup


def fwd_bwd(conv: torch.nn.Conv2d, x: torch.Tensor, w_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    y = conv(x)
    (y * w_out).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None and conv.bias is not None
    assert conv.bias.grad is not None
    return y.detach(), x.grad, conv.weight.grad, conv.bias.grad


def close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    scale = ref.abs().max().item()
    return torch.allclose(got.float().cpu() / scale, ref.float().cpu() / scale, rtol=1e-4, atol=1e-3)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


setup()
torch.manual_seed(3)
conv_cpu = torch.nn.Conv2d(64, 128, 3, padding=1)
g = torch.Generator().manual_seed(2)
x = torch.randn(8, 64, 56, 56, generator=g)
w_out = torch.randn(8, 128, 56, 56, generator=g)
ref = fwd_bwd(conv_cpu, x, w_out)

conv = torch.nn.Conv2d(64, 128, 3, padding=1).cuda()
conv.load_state_dict(conv_cpu.state_dict())
got = fwd_bwd(conv, x.cuda(), w_out.cuda())
names = ("output", "grad_input", "grad_weight", "grad_bias")
checks = {f"fp32 {n} vs CPU": close(gv, rv) for n, gv, rv in zip(names, got, ref, strict=True)}

conv_h = torch.nn.Conv2d(64, 128, 3, padding=1).cuda().half().to(memory_format=torch.channels_last)
conv_h.load_state_dict({k: v.half() for k, v in conv_cpu.state_dict().items()})
x_h = x.cuda().half().to(memory_format=torch.channels_last)
got_h = fwd_bwd(conv_h, x_h, w_out.cuda().half().to(memory_format=torch.channels_last))
for n, gv, rv in zip(names, got_h, got, strict=True):
    checks[f"fp16 channels_last {n} vs fp32 (rel err < 5e-3)"] = rel_err(gv, rv) < 5e-3

values: dict[str, object] = {}
tol: dict[str, dict[str, float]] = {}
for n, gv, hv in zip(names, got, got_h, strict=True):
    values[f"fp32_{n}_sum"] = gv.double().sum().item()
    values[f"fp16_{n}_sum"] = hv.double().sum().item()
    tol[f"fp32_{n}_sum"] = {"rtol": 1e-5, "atol": 1e-6}
    tol[f"fp16_{n}_sum"] = {"rtol": 1e-3, "atol": 1e-3}
print("conv2d 3x3 64->128 on 8x64x56x56: fp32 vs CPU, fp16 channels_last vs fp32")
emit_values(values, tol)

xb = torch.randn(32, 64, 56, 56, generator=g).cuda().half().to(memory_format=torch.channels_last).requires_grad_(True)


def step() -> None:
    conv_h.zero_grad(set_to_none=True)
    conv_h(xb).float().square().mean().backward()


sec = seconds_per_iter(step, warmup=iters(5, 2), timed=iters(30, 5))
emit_throughput(conv_fwd_bwd_fp16_img_per_s=32 / sec)
finish(checks)
