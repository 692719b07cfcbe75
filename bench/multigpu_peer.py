"""Peer copies between two GPUs through the driver API, for bench/multigpu_gpu.sh: whatever libcuda.so.1 the loader
finds (the real driver natively, the fargpu stub remotely). Enables peer access both ways, then times
cuMemcpyPeerAsync of a large buffer each way with events, checks the bytes that arrived, and prints one JSON line:
devices, their UUIDs, cuDeviceCanAccessPeer both ways, GB/s each way, and whether the data was right.
Usage: multigpu_peer.py [--mib N] [--iters K]"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys

cu = ctypes.CDLL("libcuda.so.1")
C = ctypes.c_uint64


def ok(r: int, what: str) -> None:
    if r != 0:
        print(json.dumps({"error": f"{what} failed with CUDA error {r}"}))
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    ok(cu.cuInit(0), "cuInit")
    n = ctypes.c_int()
    ok(cu.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
    if n.value < 2:
        print(json.dumps({"error": f"needs 2 GPUs, sees {n.value}", "devices": n.value}))
        sys.exit(3)
    out: dict[str, object] = {"devices": n.value, "mib": a.mib, "iters": a.iters}
    uuids = []
    for d in range(n.value):
        u = ctypes.create_string_buffer(16)
        ok(cu.cuDeviceGetUuid_v2(u, d), "cuDeviceGetUuid")
        uuids.append(u.raw.hex())
    out["uuids"] = uuids
    can = ctypes.c_int()
    out["can_access"] = []
    for s, d in ((0, 1), (1, 0)):
        ok(cu.cuDeviceCanAccessPeer(ctypes.byref(can), s, d), "cuDeviceCanAccessPeer")
        out["can_access"].append(can.value)  # type: ignore[attr-defined]
    ctx = [ctypes.c_void_p(), ctypes.c_void_p()]
    buf = [C(), C()]
    size = a.mib << 20
    for d in (0, 1):
        ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx[d]), d), "cuDevicePrimaryCtxRetain")
        ok(cu.cuCtxSetCurrent(ctx[d]), "cuCtxSetCurrent")
        ok(cu.cuMemAlloc_v2(ctypes.byref(buf[d]), ctypes.c_size_t(size)), "cuMemAlloc")
        ok(cu.cuMemsetD32_v2(buf[d], ctypes.c_uint(0x1000 + d), ctypes.c_size_t(size // 4)), "cuMemsetD32")
    for d in (0, 1):
        ok(cu.cuCtxSetCurrent(ctx[d]), "cuCtxSetCurrent")
        r = cu.cuCtxEnablePeerAccess(ctx[1 - d], 0)
        if r not in (0, 704):  # 704: already enabled
            ok(r, "cuCtxEnablePeerAccess")
    gbps: dict[str, float] = {}
    correct = True
    for s, d in ((0, 1), (1, 0)):
        ok(cu.cuCtxSetCurrent(ctx[s]), "cuCtxSetCurrent")
        ok(cu.cuMemsetD32_v2(buf[s], ctypes.c_uint(0xA0000 + s), ctypes.c_size_t(size // 4)), "cuMemsetD32")
        start, stop = ctypes.c_void_p(), ctypes.c_void_p()
        ok(cu.cuEventCreate(ctypes.byref(start), 0), "cuEventCreate")
        ok(cu.cuEventCreate(ctypes.byref(stop), 0), "cuEventCreate")
        for _ in range(3):  # warm-up
            ok(cu.cuMemcpyPeerAsync(buf[d], ctx[d], buf[s], ctx[s], ctypes.c_size_t(size), None), "cuMemcpyPeerAsync")
        ok(cu.cuEventRecord(start, None), "cuEventRecord")
        for _ in range(a.iters):
            ok(cu.cuMemcpyPeerAsync(buf[d], ctx[d], buf[s], ctx[s], ctypes.c_size_t(size), None), "cuMemcpyPeerAsync")
        ok(cu.cuEventRecord(stop, None), "cuEventRecord")
        ok(cu.cuEventSynchronize(stop), "cuEventSynchronize")
        ms = ctypes.c_float()
        ok(cu.cuEventElapsedTime_v2(ctypes.byref(ms), start, stop), "cuEventElapsedTime")
        gbps[f"{s}->{d}"] = round(size * a.iters / (ms.value / 1000) / 1e9, 2) if ms.value > 0 else 0.0
        host = (ctypes.c_uint32 * 1024)()
        ok(cu.cuMemcpyDtoH_v2(host, C(buf[d].value + size - 4096), ctypes.c_size_t(4096)), "cuMemcpyDtoH")
        correct &= all(v == 0xA0000 + s for v in host)
    out["peer_GBps"] = gbps
    out["correct"] = correct
    print(json.dumps(out))
    sys.exit(0 if correct else 4)


if __name__ == "__main__":
    main()
