"""The simulated device with several devices, loaded directly (no server): CUDA_VISIBLE_DEVICES picks and orders
them as the driver does (by ordinal or UUID; the first entry naming no device ends the list), each device keeps
its physical identity (UUID, PCI bus id, memory), and peer access between devices behaves as the driver's does.
The node relies on the first to give a session exactly its lease's GPUs. (The simulated device is a test double.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fargpu import paths
from fargpu.server.devices import sim_uuid

PRELUDE = r'''
import ctypes, json, sys
cu = ctypes.CDLL(sys.argv[1])
def ok(r, what):
    if r != 0:
        print(json.dumps({"fail": what, "rc": r})); sys.exit(1)
'''

IDENTITY = PRELUDE + r'''
r = cu.cuInit(0)
if r != 0:
    print(json.dumps({"init": r})); sys.exit(0)
n = ctypes.c_int()
ok(cu.cuDeviceGetCount(ctypes.byref(n)), "count")
devs = []
for i in range(n.value):
    u = ctypes.create_string_buffer(16)
    ok(cu.cuDeviceGetUuid_v2(u, i), "uuid")
    h = u.raw.hex()
    pci = ctypes.create_string_buffer(32)
    ok(cu.cuDeviceGetPCIBusId(pci, 32, i), "pci")
    tot = ctypes.c_size_t()
    ok(cu.cuDeviceTotalMem_v2(ctypes.byref(tot), i), "mem")
    devs.append([f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", pci.value.decode(), tot.value])
print(json.dumps({"init": 0, "devs": devs}))
'''


def _run(code: str, **env: str) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "FARGPU_SIM_MEM_BYTES")}
    full.update(env)
    res = subprocess.run([sys.executable, "-P", "-c", code, str(paths.sim_lib())], env=full, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_visible_devices_pick_and_order_the_simulated_devices() -> None:
    mem = f"{1 << 30},{2 << 30},{3 << 30}"  # the last value repeats for device 3
    every = _run(IDENTITY, FARGPU_SIM_DEVICES="4", FARGPU_SIM_MEM_BYTES=mem)
    assert every["devs"] == [[sim_uuid(i), f"0000:{0x18 + i:02X}:00.0", min(i + 1, 3) << 30] for i in range(4)]
    # by ordinal and by (a prefix of a) UUID, in the order given; an unknown entry ends the list
    picked = _run(IDENTITY, FARGPU_SIM_DEVICES="4", FARGPU_SIM_MEM_BYTES=mem,
                  CUDA_VISIBLE_DEVICES=f"2,{sim_uuid(0)},{sim_uuid(3)[:-1]}3,7,1")
    assert picked["devs"] == [every["devs"][2], every["devs"][0], every["devs"][3]], picked  # type: ignore[index]
    # a device listed twice ends the list too; none visible: cuInit says CUDA_ERROR_NO_DEVICE (100)
    assert len(_run(IDENTITY, FARGPU_SIM_DEVICES="4", CUDA_VISIBLE_DEVICES="1,1,2")["devs"]) == 1  # type: ignore[arg-type]
    assert _run(IDENTITY, FARGPU_SIM_DEVICES="4", CUDA_VISIBLE_DEVICES="")["init"] == 100
    assert _run(IDENTITY, FARGPU_SIM_DEVICES="4", CUDA_VISIBLE_DEVICES="GPU-ffff")["init"] == 100
