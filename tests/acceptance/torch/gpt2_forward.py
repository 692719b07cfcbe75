"""Acceptance and benchmark: GPT-2 (transformers GPT2LMHeadModel(GPT2Config()), 124M parameters, random init
under a fixed seed, no download) forward pass in fp16 on 8 x 512 tokens of fixed random ids. Device check: fp16
logits finite and within 2e-2 relative Frobenius error of the fp32 model's logits for the first two sequences.
Native vs remote: the argmax token at every position (at most 1% of 4096 may differ), per-sequence logit sums
rtol 1e-2 (identical when the same kernels run). Throughput: tokens/s over 20 timed forwards after 3 warm-up
forwards (5 and 1 when quick), and the rate at which the host dispatches 20 more (no wait at the end)."""

from __future__ import annotations

import os
import time

import torch
from _common import emit_throughput, emit_values, finish, iters, seconds_per_iter, setup

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

setup()
torch.manual_seed(0)
cfg = GPT2Config()
model = GPT2LMHeadModel(cfg).eval().cuda()
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, cfg.vocab_size, (8, 512), generator=g).cuda()
with torch.inference_mode():
    ref = model(ids[:2]).logits.float()
model = model.half()  # outside inference mode: parameters must stay ordinary tensors
with torch.inference_mode():
    logits = model(ids).logits
rel = ((logits[:2].float() - ref).norm() / ref.norm()).item()
argmax = logits.argmax(dim=-1)
sums = [round(v, 3) for v in logits.double().sum(dim=(1, 2)).tolist()]
print(f"gpt2 fp16 forward, {ids.shape[0]}x{ids.shape[1]} tokens, vocab {cfg.vocab_size}")
emit_values(
    {"argmax": argmax.flatten().tolist(), "logit_sums": sums},
    {"argmax": {"max_mismatches": 41}, "logit_sums": {"rtol": 1e-2, "atol": 1.0}},
)


def forward() -> None:
    with torch.inference_mode():
        model(ids)


sec = seconds_per_iter(forward, warmup=iters(3, 1), timed=iters(20, 5))
# Where the time goes: how fast the host hands the same forwards to the GPU (no wait at the end). Close to the
# tokens/s above, the host side limits the rate; well above it, the device side (or the node, through fargpu) does.
n = iters(20, 5)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(n):
    forward()
dispatched = time.perf_counter() - start
torch.cuda.synchronize()
emit_throughput(gpt2_fp16_tokens_per_s=ids.numel() / sec,
                gpt2_fp16_host_dispatch_tokens_per_s=ids.numel() * n / dispatched)
finish({
    "fp16 logits finite": bool(torch.isfinite(logits).all().item()),
    "fp16 logits within 2e-2 of fp32": rel < 2e-2,
})
