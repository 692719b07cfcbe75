"""Tensor maps (TMA descriptors) through fargpu (client_stub/tensormap.c, server/replay/tensormap.c), end to end with
the real stub, node agent, worker and simulated device (server/sim/sim_tensormap.c): tiled, im2col and im2col-wide
maps and an address replacement, encoded by the node's driver. The same program runs a second time against the
simulated device loaded directly as libcuda.so.1, so the 128 bytes that came back through fargpu must be exactly
what the driver encodes for those parameters; invalid parameters are refused as the driver refuses them
(CUDA_ERROR_INVALID_VALUE), some by the stub (what it needs to send the call), most by the node's driver."""

from __future__ import annotations

import os
from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

from fargpu import paths

CLIENT = PRELUDE + r'''
import hashlib
ctx0()
U64, U32 = ctypes.c_uint64, ctypes.c_uint32
class Map(ctypes.Structure):
    _fields_ = [("q", ctypes.c_uint64 * 16)]
raw = ctypes.create_string_buffer(128 + 64)
base = (ctypes.addressof(raw) + 63) // 64 * 64
m = Map.from_address(base)
A = 0x7f1234560000  # a device address as the application would pass it (the encoding does not dereference it)
def arr(t, *v):
    return (t * len(v))(*v)
def tiled(addr=A, rank=2, dtype=7, dims=(64, 32), strides=(256,), box=(16, 8), es=(1, 1), il=0, sw=0, l2=0, oob=0,
          where=None):
    return cu.cuTensorMapEncodeTiled(ctypes.c_void_p(where or base), dtype, rank, ctypes.c_void_p(addr),
                                     arr(U64, *dims), arr(U64, *strides) if strides else None, arr(U32, *box),
                                     arr(U32, *es), il, sw, l2, oob)
def digest():
    return hashlib.sha256(ctypes.string_at(base, 128)).hexdigest()[:16]
print("tiled", tiled(), digest())
print("tiled swizzle 32B bf16 rank 3", tiled(rank=3, dtype=9, dims=(16, 8, 4), strides=(32, 256), box=(16, 4, 2),
                                             es=(1, 2, 1), sw=1, l2=2), digest())
ok(tiled(), "again")
same = digest()
r, dev = alloc(64 * 32 * 4); ok(r, "alloc")
print("replace", cu.cuTensorMapReplaceAddress(ctypes.c_void_p(base), ctypes.c_void_p(A + 4096)), digest())
print("replace misaligned", cu.cuTensorMapReplaceAddress(ctypes.c_void_p(base), ctypes.c_void_p(A + 8)))
print("replace real allocation", cu.cuTensorMapReplaceAddress(ctypes.c_void_p(base), ctypes.c_void_p(dev)))
print("first quadword is the allocation", m.q[0] == dev)
print("misaligned address", tiled(addr=A + 8))
print("box 0", tiled(box=(0, 8)), "box 257", tiled(box=(257, 8)))
print("inner box not 16 bytes", tiled(box=(3, 8)))
print("stride not a multiple of 16", tiled(strides=(264,)))
print("nan fill on uint8", tiled(dtype=0, box=(16, 8), oob=1))
print("swizzle span too small", tiled(box=(16, 8), sw=1))
print("rank 0", tiled(rank=0), "rank 6", tiled(rank=6, dims=(1,) * 6, strides=(16,) * 5, box=(1,) * 6, es=(1,) * 6))
print("map not 64-byte aligned", tiled(where=base + 32))
print("bad data type", tiled(dtype=99))
print("no box array", cu.cuTensorMapEncodeTiled(ctypes.c_void_p(base), 7, 2, ctypes.c_void_p(A), arr(U64, 64, 32),
                                                 arr(U64, 256), None, arr(U32, 1, 1), 0, 0, 0, 0))
def im2col(rank=4, lower=(-1, -1), upper=(1, 1), cpp=16, ppc=64):
    dims = (16, 8, 8, 2)[:rank] if rank <= 4 else (16, 8, 8, 4, 2)
    strides = (32, 256, 2048, 16384)[:rank - 1]
    return cu.cuTensorMapEncodeIm2col(ctypes.c_void_p(base), 6, rank, ctypes.c_void_p(A), arr(U64, *dims),
                                      arr(U64, *strides), arr(ctypes.c_int, *lower), arr(ctypes.c_int, *upper), cpp,
                                      ppc, arr(U32, *([1] * rank)), 0, 0, 0, 0)
print("im2col", im2col(), digest())
print("im2col corner out of range", im2col(lower=(-200, 0)))
print("im2col 300 channels", im2col(cpp=300))
def wide(mode=0, ppc=32):
    return cu.cuTensorMapEncodeIm2colWide(ctypes.c_void_p(base), 6, 3, ctypes.c_void_p(A), arr(U64, 16, 64, 2),
                                          arr(U64, 32, 2048), -2, 2, 16, ppc, arr(U32, 1, 1, 1), 0, mode, 0, 0, 0)
print("im2col wide", wide(), digest())
print("im2col wide 2000 pixels", wide(ppc=2000))
ok(tiled(), "once more")
print("repeat identical", digest() == same)
'''


def _direct_env(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "simlib"
    d.mkdir()
    (d / "libcuda.so.1").symlink_to(paths.sim_lib())
    env = dict(os.environ, LD_LIBRARY_PATH=str(d))
    env.pop("LD_PRELOAD", None)
    return env


def test_tensor_maps_are_the_drivers_encoding(server: NodeServer, tmp_path: Path) -> None:
    remote = run_client(CLIENT, server.client_env())
    assert remote.returncode == 0, remote.stdout + remote.stderr + server.log_text()[-3000:]
    direct = run_client(CLIENT, _direct_env(tmp_path))
    assert direct.returncode == 0, direct.stdout + direct.stderr
    out = remote.stdout.splitlines()
    # The same bytes as the simulated driver gives a program that calls it directly; every answer the same, except
    # the digest after the map was pointed at an allocation (the two processes' allocations differ).
    assert [ln for ln in out if "real allocation" not in ln] == \
        [ln for ln in direct.stdout.splitlines() if "real allocation" not in ln], (out, direct.stdout)
    assert out[0].startswith("tiled 0 ") and out[1].startswith("tiled swizzle 32B bf16 rank 3 0 "), out
    assert out[2].startswith("replace 0 ") and out[2].split()[-1] != out[0].split()[-1], out
    for line in ("replace misaligned 1", "replace real allocation 0", "first quadword is the allocation True",
                 "misaligned address 1", "box 0 1 box 257 1", "inner box not 16 bytes 1",
                 "stride not a multiple of 16 1", "nan fill on uint8 1", "swizzle span too small 1",
                 "rank 0 1 rank 6 1", "map not 64-byte aligned 1", "bad data type 1", "no box array 1",
                 "im2col corner out of range 1", "im2col 300 channels 1", "im2col wide 2000 pixels 1",
                 "repeat identical True"):
        assert line in out, (line, out)
    assert any(ln.startswith("im2col 0 ") for ln in out) and any(ln.startswith("im2col wide 0 ") for ln in out), out
