"""Acceptance: the NVML answers NCCL reads before it starts, through libnvidia-ml.so.1 loaded the way NCCL loads it
(natively the real library, through fargpu the NVML shim beside the stub). NCCL's initialisation stops unless
nvmlDeviceGetP2PStatus succeeds for the read and write index of every pair of devices, each device with itself
included. The script prints the read, write and atomics status of every pair, and the device count and compute
capabilities, which must be the same natively and remote. The NVLink and PCI indexes are compared only for a device
with itself: between two devices the shim refuses them, because the link type is not visible through the driver API.
On an H100 the real library answers a device with itself with status NOT_SUPPORTED (5) for the defined indexes, and
succeeds with status OK (0) for an index past the last. torch is imported only to check that the CUDA device count
agrees with NVML's."""

from __future__ import annotations

import ctypes

import torch
from _common import finish

nv = ctypes.CDLL("libnvidia-ml.so.1")
nv.nvmlErrorString.restype = ctypes.c_char_p
checks: dict[str, bool] = {}
checks["nvmlInit_v2"] = nv.nvmlInit_v2() == 0
count = ctypes.c_uint(0)
checks["nvmlDeviceGetCount_v2"] = nv.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
print(f"nvml devices {count.value}")
checks["NVML and CUDA count the same devices"] = count.value == torch.cuda.device_count()
handles = []
for i in range(count.value):
    h = ctypes.c_void_p()
    checks[f"handle {i}"] = nv.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(h)) == 0
    handles.append(h)
    major, minor = ctypes.c_int(), ctypes.c_int()
    rc = nv.nvmlDeviceGetCudaComputeCapability(h, ctypes.byref(major), ctypes.byref(minor))
    print(f"device {i} compute capability rc {rc}: {major.value}.{minor.value}")
for a, ha in enumerate(handles):
    for b, hb in enumerate(handles):
        row = []
        for index, name in ((0, "read"), (1, "write"), (3, "atomics")):
            status = ctypes.c_uint(99)
            rc = nv.nvmlDeviceGetP2PStatus(ha, hb, ctypes.c_uint(index), ctypes.byref(status))
            row.append(f"{name} rc {rc} status {status.value}")
            if index in (0, 1):
                checks[f"p2p {name} {a}->{b} answered (NCCL needs it)"] = rc == 0
        print(f"p2p {a}->{b}: " + ", ".join(row))
for index in (5, 6, 77):
    bad = ctypes.c_uint(99)
    rc = nv.nvmlDeviceGetP2PStatus(handles[0], handles[0], ctypes.c_uint(index), ctypes.byref(bad)) if handles else -1
    print(f"p2p of a device with itself, index {index} (past the last): rc {rc} status {bad.value}")
for index, name in ((2, "nvlink"), (4, "pci")):
    status = ctypes.c_uint(99)
    rc = nv.nvmlDeviceGetP2PStatus(handles[0], handles[0], ctypes.c_uint(index), ctypes.byref(status))
    print(f"p2p of a device with itself, {name} index: rc {rc} status {status.value}")
checks["nvmlShutdown"] = nv.nvmlShutdown() == 0
finish(checks)
