"""cuPointerSetAttribute through the stub on the simulated device: SYNC_MEMOPS, the one attribute an application
sets, reads back as set (device memory, managed memory, page-locked host memory) and goes with the allocation; the
other attributes, a NULL value and memory CUDA does not know are CUDA_ERROR_INVALID_VALUE, and the application's own
VMM mapping is CUDA_ERROR_NOT_SUPPORTED, as the driver answers. While it is set, every synchronous memset and copy
into that memory returns only after the device has done it (the stub synchronises the legacy stream after it:
counted with FARGPU_STATS), and memory without it is left alone."""

from __future__ import annotations

import re

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

SYNC_MEMOPS, MEMORY_TYPE = 6, 2  # CU_POINTER_ATTRIBUTE_*

CLIENT = PRELUDE + r'''
SYNC_MEMOPS, MEMORY_TYPE = 6, 2
mode = sys.argv[1] if len(sys.argv) > 1 else "__MODE__"
ctx0()
n = 1 << 20
r, a = alloc(n); ok(r, "alloc a")
r, b = alloc(n); ok(r, "alloc b")
def setattr_(v, attr, p):
    return cu.cuPointerSetAttribute(ctypes.byref(ctypes.c_uint(v)), attr, ctypes.c_uint64(p))
def getattr_(p):
    v = ctypes.c_int(-1)
    ok(cu.cuPointerGetAttribute(ctypes.byref(v), SYNC_MEMOPS, ctypes.c_uint64(p)), "get")
    return v.value
if mode != "none":
    ok(setattr_(1, SYNC_MEMOPS, a if mode == "target" else b), "set")
print("a", getattr_(a), "a inside", getattr_(a + 4096), "b", getattr_(b))
data = bytes(range(256)) * (4096 // 256)
for i in range(10):
    ok(cu.cuMemsetD8_v2(ctypes.c_uint64(a), ctypes.c_ubyte(i), ctypes.c_size_t(n)), "memset")
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(a + 4096), data, ctypes.c_size_t(4096)), "htod")
out = ctypes.create_string_buffer(8192)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(a), ctypes.c_size_t(8192)), "dtoh")
print("data", "right" if out.raw == bytes([9]) * 4096 + data else "WRONG")
if mode == "target":
    print("other attribute", setattr_(1, MEMORY_TYPE, a))
    print("no value", cu.cuPointerSetAttribute(None, SYNC_MEMOPS, ctypes.c_uint64(a)))
    plain = ctypes.create_string_buffer(64)
    print("unknown memory", setattr_(1, SYNC_MEMOPS, ctypes.addressof(plain)))
    ok(setattr_(0, SYNC_MEMOPS, a), "unset")
    print("after unset", getattr_(a))
    ok(setattr_(1, SYNC_MEMOPS, a), "set again")
    ok(cu.cuMemFree_v2(ctypes.c_uint64(a)), "free")
    r, c = alloc(n); ok(r, "alloc c")
    print("new allocation", getattr_(c))
    m = ctypes.c_uint64()
    ok(cu.cuMemAllocManaged(ctypes.byref(m), ctypes.c_size_t(n), 1), "managed")
    ok(setattr_(1, SYNC_MEMOPS, m.value), "set managed")
    h = ctypes.c_void_p()
    ok(cu.cuMemAllocHost_v2(ctypes.byref(h), ctypes.c_size_t(n)), "pinned")
    ok(setattr_(1, SYNC_MEMOPS, h.value), "set pinned")
    print("managed", getattr_(m.value), "pinned", getattr_(h.value))
    class Prop(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("loc_type", ctypes.c_int),
                    ("loc_id", ctypes.c_int), ("win32", ctypes.c_void_p), ("compression", ctypes.c_ubyte),
                    ("gpuDirectRDMACapable", ctypes.c_ubyte), ("usage", ctypes.c_ushort),
                    ("reserved", ctypes.c_ubyte * 4)]
    prop = Prop(type=1, loc_type=1, loc_id=0)
    g = ctypes.c_size_t()
    ok(cu.cuMemGetAllocationGranularity(ctypes.byref(g), ctypes.byref(prop), 0), "granularity")
    va, hv = ctypes.c_uint64(), ctypes.c_uint64()
    ok(cu.cuMemAddressReserve(ctypes.byref(va), g, ctypes.c_size_t(0), ctypes.c_uint64(0), ctypes.c_ulonglong(0)),
       "reserve")
    ok(cu.cuMemCreate(ctypes.byref(hv), g, ctypes.byref(prop), ctypes.c_ulonglong(0)), "create")
    ok(cu.cuMemMap(va, g, ctypes.c_size_t(0), hv, ctypes.c_ulonglong(0)), "map")
    print("vmm mapping", setattr_(1, SYNC_MEMOPS, va.value))
print("OK")
'''


def _syncs(stderr: str) -> int:
    m = re.search(r"^\s+cuStreamSynchronize\s+\w+\s+sent\s+(\d+)", stderr, re.M)
    return int(m.group(1)) if m else 0


def _run(server: NodeServer, mode: str) -> tuple[list[str], int]:
    r = run_client(CLIENT.replace("__MODE__", mode), server.client_env(FARGPU_STATS="1"))
    out = r.stdout.splitlines()
    assert r.returncode == 0 and out and out[-1] == "OK", r.stdout + r.stderr + server.log_text()[-2000:]
    assert "data right" in out, out
    return out, _syncs(r.stderr)


def test_sync_memops_is_kept_and_refused_as_the_driver_does(node_server: NodeServer) -> None:
    out, _ = _run(node_server, "target")
    assert "a 1 a inside 1 b 0" in out, out
    for line in ("other attribute 1", "no value 1", "unknown memory 1",  # CUDA_ERROR_INVALID_VALUE
                 "after unset 0", "new allocation 0", "managed 1 pinned 1",
                 "vmm mapping 801"):  # CUDA_ERROR_NOT_SUPPORTED, as the driver answers for VMM memory
        assert line in out, out


def test_synchronous_operations_into_it_wait_for_the_device(node_server: NodeServer) -> None:
    out, none = _run(node_server, "none")
    assert "a 0 a inside 0 b 0" in out, out
    _, other = _run(node_server, "other")
    _, target = _run(node_server, "target")
    assert none == 0, none
    assert other == 1, other  # setting it waits for what is queued; the memsets and copies into a do not wait
    assert target >= 1 + 20, target  # and into a: each of the 10 memsets and 10 copies waits
