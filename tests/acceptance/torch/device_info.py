"""Acceptance: what PyTorch sees of the device through fargpu: device count, name, compute capability, SM count,
UUID, total memory (torch.cuda.mem_get_info's total and the device properties; free memory varies, so it is only
checked to lie in (0, total]), the CUDA and cuDNN versions torch was built with, and one small kernel."""

from __future__ import annotations

import torch
from _common import finish, setup

setup()
count = torch.cuda.device_count()
print(f"is_available {torch.cuda.is_available()}")
print(f"device_count {count}")
print(f"get_device_name(0) {torch.cuda.get_device_name(0)}")
props = torch.cuda.get_device_properties(0)
print(f"capability {props.major}.{props.minor} multi_processor_count {props.multi_processor_count}")
print(f"uuid {props.uuid}")
free, total = torch.cuda.mem_get_info(0)
print(f"mem_get_info total {total}")
print(f"properties total_memory {props.total_memory}")
print(f"torch {torch.__version__} cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()}")
s = int(torch.arange(1000, device="cuda").sum().item())
print(f"arange(1000).sum() on the device {s}")
finish({
    "at least one device": count >= 1,
    "0 < free <= total": 0 < free <= total,
    "a kernel ran": s == 499500,
})
