"""2D copies (cuMemcpy2D, cuMemcpy2DUnaligned, cuMemcpy2DAsync) through the stub, end to end with the simulated
device: a sub-rectangle goes host→device with pitches and offsets, device→device, and back device→host (also with
unified addressing), byte for byte; CUDA arrays are refused as not supported.

The simulated device is a test double: this is about the bytes the stub moves."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
class M2D(ctypes.Structure):
    _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int),
                ("srcHost", ctypes.c_void_p), ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p),
                ("srcPitch", ctypes.c_size_t), ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t),
                ("dstMemoryType", ctypes.c_int), ("dstHost", ctypes.c_void_p), ("dstDevice", ctypes.c_uint64),
                ("dstArray", ctypes.c_void_p), ("dstPitch", ctypes.c_size_t), ("WidthInBytes", ctypes.c_size_t),
                ("Height", ctypes.c_size_t)]
HOST, DEVICE, ARRAY, UNIFIED = 1, 2, 3, 4
ctx0()
W, H, HP, DP = 24, 7, 40, 64  # copy 24 x 7 bytes; host pitch 40, device pitch 64
src = (ctypes.c_ubyte * (HP * (H + 2)))(*[(i * 7 + 3) % 251 for i in range(HP * (H + 2))])
r, d1 = alloc(DP * (H + 2)); ok(r, "alloc1")
r, d2 = alloc(DP * (H + 2)); ok(r, "alloc2")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(d1), 0, ctypes.c_size_t(DP * (H + 2))), "memset")
c = M2D(srcXInBytes=5, srcY=1, srcMemoryType=HOST, srcHost=ctypes.addressof(src), srcPitch=HP, dstXInBytes=8, dstY=2,
        dstMemoryType=DEVICE, dstDevice=d1, dstPitch=DP, WidthInBytes=W, Height=H)
ok(cu.cuMemcpy2D_v2(ctypes.byref(c)), "htod 2d")
c = M2D(srcXInBytes=8, srcY=2, srcMemoryType=UNIFIED, srcDevice=d1, srcPitch=DP, dstXInBytes=0, dstY=0,
        dstMemoryType=DEVICE, dstDevice=d2, dstPitch=DP, WidthInBytes=W, Height=H)
ok(cu.cuMemcpy2DUnaligned_v2(ctypes.byref(c)), "dtod 2d")
out = (ctypes.c_ubyte * (W * H))()
c = M2D(srcMemoryType=DEVICE, srcDevice=d2, srcPitch=DP, dstMemoryType=UNIFIED, dstDevice=ctypes.addressof(out),
        dstPitch=W, WidthInBytes=W, Height=H)
ok(cu.cuMemcpy2DAsync_v2(ctypes.byref(c), None), "dtoh 2d async")
ok(cu.cuCtxSynchronize(), "sync")
want = bytes(src[(1 + y) * HP + 5 + x] for y in range(H) for x in range(W))
whole = (ctypes.c_ubyte * (DP * (H + 2)))()
ok(cu.cuMemcpyDtoH_v2(whole, ctypes.c_uint64(d1), ctypes.c_size_t(DP * (H + 2))), "dtoh whole")
outside = sum(whole[i] for i in range(DP * (H + 2)) if not (2 <= i // DP < 2 + H and 8 <= i % DP < 8 + W))
c = M2D(srcMemoryType=ARRAY, dstMemoryType=DEVICE, dstDevice=d2, dstPitch=DP, WidthInBytes=W, Height=H)
print("match", bytes(out) == want, "outside", outside, "array", cu.cuMemcpy2D_v2(ctypes.byref(c)))
'''



def test_2d_copies_move_exactly_the_rectangle(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    # A 2D copy from an array goes to the array path (arrays.c); no array named: CUDA_ERROR_INVALID_HANDLE.
    assert "match True outside 0 array 400" in r.stdout, r.stdout + r.stderr
