"""The simulated device with several devices, loaded directly (no server): CUDA_VISIBLE_DEVICES picks and orders
them as the driver does (by ordinal or UUID; the first entry naming no device ends the list), each device keeps
its physical identity (UUID, PCI bus id, memory), and peer access between devices behaves as the driver's does.
The node relies on the first to give a session exactly its lease's GPUs. (The simulated device is a test double.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cuda_ctypes import TEST_PTX
from e2e_helpers import start_server, stop_server

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
    res = subprocess.run([sys.executable, "-P", "-c", code, str(paths.sim_lib()), str(TEST_PTX)], env=full,
                         capture_output=True, text=True, timeout=60)
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


# One program, run on the simulated device directly (the "native" answer) and through fargpu (stub, protocol, node,
# replay, the same simulated device under it): every call's result and the bytes it leaves must be the same.
PEER = PRELUDE + r"""
C = ctypes.c_uint64
out = {}
ok(cu.cuInit(0), "init")
n = ctypes.c_int(); ok(cu.cuDeviceGetCount(ctypes.byref(n)), "count"); out["count"] = n.value
can = ctypes.c_int(-1)
out["can01"] = [cu.cuDeviceCanAccessPeer(ctypes.byref(can), 0, 1), can.value]
out["can00"] = [cu.cuDeviceCanAccessPeer(ctypes.byref(can), 0, 0), can.value]
v = ctypes.c_int(-1)
out["p2p_access"] = [cu.cuDeviceGetP2PAttribute(ctypes.byref(v), 2, 0, 1), v.value]  # ACCESS_SUPPORTED
out["p2p_same"] = cu.cuDeviceGetP2PAttribute(ctypes.byref(v), 2, 1, 1)
ctx = [ctypes.c_void_p(), ctypes.c_void_p()]
for d in (0, 1):
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx[d]), d), "retain")
N = 1 << 16
def alloc(d):
    ok(cu.cuCtxSetCurrent(ctx[d]), "set")
    p = C(); ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(N * 4)), "alloc"); return p.value
def read(p):
    buf = (ctypes.c_uint32 * N)()
    ok(cu.cuMemcpyDtoH_v2(buf, C(p), ctypes.c_size_t(N * 4)), "dtoh")
    return sorted(set(buf))
ok(cu.cuCtxSetCurrent(ctx[0]), "set0")
mod = ctypes.c_void_p()
ok(cu.cuModuleLoadData(ctypes.byref(mod), open(sys.argv[2], "rb").read() + b"\0"), "load")
fill = ctypes.c_void_p(); ok(cu.cuModuleGetFunction(ctypes.byref(fill), mod, b"fg_fill_u32"), "func")
def launch(p, val):
    # from device 0: the first error of the launch and the synchronisation after it (a GPU reports a fault there)
    ok(cu.cuCtxSetCurrent(ctx[0]), "set0")
    a, b, c = C(p), ctypes.c_uint32(val), ctypes.c_uint64(N)
    args = (ctypes.c_void_p * 3)(ctypes.addressof(a), ctypes.addressof(b), ctypes.addressof(c))
    r = cu.cuLaunchKernel(fill, 64, 1, 1, 128, 1, 1, 0, None, args, None)
    s = cu.cuCtxSynchronize()
    return r or s
A = alloc(0); B = alloc(1)
ok(cu.cuMemsetD32_v2(C(B), 7, ctypes.c_size_t(N)), "memset")
out["own"] = [launch(A, 1), read(A)]
out["peer_before"] = [launch(B, 2), read(B)]
ok(cu.cuCtxSetCurrent(ctx[0]), "set0")
out["enable"] = [cu.cuCtxEnablePeerAccess(ctx[1], 0), cu.cuCtxEnablePeerAccess(ctx[1], 0),
                 cu.cuCtxEnablePeerAccess(ctx[0], 0), cu.cuCtxEnablePeerAccess(ctx[1], 1)]
out["peer_after"] = [launch(B, 3), read(B)]
Cnew = alloc(1)  # allocated after peer access was enabled: reachable too
out["peer_future"] = [launch(Cnew, 4), read(Cnew)]
ok(cu.cuCtxSetCurrent(ctx[0]), "set0")
out["copy_peer"] = [cu.cuMemcpyPeer(C(A), ctx[0], C(B), ctx[1], ctypes.c_size_t(N * 4)), cu.cuCtxSynchronize(), read(A)]
out["copy_peer_async"] = [cu.cuMemcpyPeerAsync(C(B), ctx[1], C(Cnew), ctx[1], ctypes.c_size_t(N * 4), None),
                          cu.cuCtxSynchronize(), read(B)]
# an async copy's error may come with the call or the next synchronisation (fargpu: the latter, as a GPU may)
out["copy_peer_bad"] = cu.cuMemcpyPeer(C(A), ctx[0], C(B + N * 4 * 64), ctx[1], ctypes.c_size_t(16)) or \
    cu.cuCtxSynchronize()
out["disable"] = [cu.cuCtxDisablePeerAccess(ctx[1]), cu.cuCtxDisablePeerAccess(ctx[1])]
out["peer_disabled"] = [launch(B, 5), read(B)]
# a 3D peer copy from device 1 into device 0 (no peer access needed, as for cuMemcpyPeer): 16 rows of 64 bytes from
# rows 256 bytes apart into rows 128 bytes apart, at byte 32 of row 2
class Peer3D(ctypes.Structure):
    _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcZ", ctypes.c_size_t),
                ("srcLOD", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int), ("srcHost", ctypes.c_void_p),
                ("srcDevice", C), ("srcArray", ctypes.c_void_p), ("srcContext", ctypes.c_void_p),
                ("srcPitch", ctypes.c_size_t), ("srcHeight", ctypes.c_size_t),
                ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstZ", ctypes.c_size_t),
                ("dstLOD", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int), ("dstHost", ctypes.c_void_p),
                ("dstDevice", C), ("dstArray", ctypes.c_void_p), ("dstContext", ctypes.c_void_p),
                ("dstPitch", ctypes.c_size_t), ("dstHeight", ctypes.c_size_t),
                ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t), ("Depth", ctypes.c_size_t)]
ok(cu.cuCtxSetCurrent(ctx[0]), "set0")
ok(cu.cuMemsetD32_v2(C(A), 0, ctypes.c_size_t(N)), "memset A")
p3 = Peer3D(srcMemoryType=2, srcDevice=B, srcContext=ctx[1], srcPitch=256, dstXInBytes=32, dstY=2,
            dstMemoryType=2, dstDevice=A, dstContext=ctx[0], dstPitch=128, WidthInBytes=64, Height=16, Depth=1)
r3 = cu.cuMemcpy3DPeer(ctypes.byref(p3))
buf = (ctypes.c_uint32 * N)()
ok(cu.cuMemcpyDtoH_v2(buf, C(A), ctypes.c_size_t(N * 4)), "dtoh 3d")
out["copy_3d_peer"] = [r3, [i for i in range(N) if buf[i]][:3], sum(1 for x in buf if x == 4)]
ops = (ctypes.c_int * 2)(0, 10)  # integer add, float add
caps = (ctypes.c_uint * 2)(0xffff, 0xffff)
out["p2p_atomics"] = [cu.cuDeviceGetP2PAtomicCapabilities(caps, ops, 2, 0, 1), list(caps)]
out["p2p_atomics_same"] = cu.cuDeviceGetP2PAtomicCapabilities(caps, ops, 2, 1, 1)
# VMM: the application's own mapping on device 1, reachable from device 0 only once cuMemSetAccess names it
class Prop(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("loc_type", ctypes.c_int),
                ("loc_id", ctypes.c_int), ("win32", ctypes.c_void_p), ("compression", ctypes.c_ubyte),
                ("gpuDirect", ctypes.c_ubyte), ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]
class Access(ctypes.Structure):
    _fields_ = [("loc_type", ctypes.c_int), ("loc_id", ctypes.c_int), ("flags", ctypes.c_int)]
ok(cu.cuCtxSetCurrent(ctx[1]), "set1")
prop = Prop(1, 0, 1, 1)
size = 2 << 20
h = C(); ok(cu.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop), C(0)), "create")
va = C(); ok(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(size), ctypes.c_size_t(0), C(0), C(0)), "reserve")
ok(cu.cuMemMap(C(va.value), ctypes.c_size_t(size), ctypes.c_size_t(0), h, C(0)), "map")
own = (Access * 1)(Access(1, 1, 3))
ok(cu.cuMemSetAccess(C(va.value), ctypes.c_size_t(size), own, ctypes.c_size_t(1)), "access own")
out["vmm_own_only"] = launch(va.value, 6)
both = (Access * 2)(Access(1, 1, 3), Access(1, 0, 3))
out["vmm_both"] = [cu.cuMemSetAccess(C(va.value), ctypes.c_size_t(size), both, ctypes.c_size_t(2)),
                   launch(va.value, 8), read(va.value)]
print(json.dumps(out))
"""


def test_peer_access_through_fargpu_behaves_as_on_the_device(tmp_path: Path) -> None:
    native = _run(PEER, FARGPU_SIM_DEVICES="2")
    s = start_server(tmp_path, env_extra={"FARGPU_SIM_DEVICES": "2"})
    try:
        env = s.client_env()
        res = subprocess.run([sys.executable, "-P", "-c", PEER, "libcuda.so.1", str(TEST_PTX)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr + s.log_text()[-3000:]
        remote = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        stop_server(s)
    assert remote == native, (remote, native)
    # and what the device does is what the driver documents
    assert native["can01"] == [0, 1] and native["can00"] == [0, 0] and native["p2p_access"] == [0, 1]
    assert native["own"] == [0, [1]]
    assert native["peer_before"] == [1, [7]]  # device 0 may not reach device 1's memory yet
    assert native["enable"] == [0, 704, 217, 1]  # ALREADY_ENABLED, PEER_ACCESS_UNSUPPORTED, INVALID_VALUE
    assert native["peer_after"] == [0, [3]] and native["peer_future"] == [0, [4]]
    assert native["copy_peer"] == [0, 0, [3]] and native["copy_peer_async"] == [0, 0, [4]]
    assert native["copy_peer_bad"] == 1
    assert native["disable"] == [0, 705] and native["peer_disabled"] == [1, [4]]
    # rows of 64 bytes (16 words of 4) land at word 8 of 32-word rows from row 2 on: 16 x 16 words
    assert native["copy_3d_peer"] == [0, [72, 73, 74], 256]
    assert native["p2p_atomics"] == [0, [0x1f, 0x18]] and native["p2p_atomics_same"] == 101  # INVALID_DEVICE
    assert native["vmm_own_only"] == 1 and native["vmm_both"] == [0, 0, [8]]
