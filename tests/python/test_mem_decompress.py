"""cuMemBatchDecompressAsync through the stub on the simulated device, which has no decompression engine (as H100
and H200): a batch on the session's memory reaches the node's driver (its error log says why it refused) and comes
back CUDA_ERROR_NOT_SUPPORTED with the error index untouched (as the H100's driver left it), on the per-thread
stream too; the driver's argument checks
come back with their index; an operation naming memory that is not the session's (a host buffer of the client) is
refused by the worker with that operation's index before the driver sees it; more operations than a batch carries
are refused in the stub."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
SIZE_MAX = (1 << 64) - 1
class Params(ctypes.Structure):
    _fields_ = [("srcNumBytes", ctypes.c_size_t), ("dstNumBytes", ctypes.c_size_t), ("dstActBytes", ctypes.c_uint64),
                ("src", ctypes.c_uint64), ("dst", ctypes.c_uint64), ("algo", ctypes.c_int),
                ("padding", ctypes.c_ubyte * 20)]
assert ctypes.sizeof(Params) == 64
ctx0()
r, src = alloc(1 << 16); ok(r, "src")
r, dst = alloc(1 << 16); ok(r, "dst")
r, act = alloc(4096); ok(r, "act")
ops = (Params * 2)()
for k in range(2):
    ops[k] = Params(4096, 8192, act + 4 * k, src + 4096 * k, dst + 8192 * k, 1)
def batch(arr, n, flags=0, fn=cu.cuMemBatchDecompressAsync, want=True):
    idx = ctypes.c_size_t(12345)
    rc = fn(arr, ctypes.c_size_t(n), flags, ctypes.byref(idx) if want else None, None)
    return rc, "general" if idx.value == SIZE_MAX else idx.value
it = ctypes.c_uint()
ok(cu.cuLogsCurrent(ctypes.byref(it), 0), "log iterator")
print("batch", *batch(ops, 2))
print("per-thread", *batch(ops, 2, fn=cu.cuMemBatchDecompressAsync_ptsz))
print("no index", batch(ops, 2, want=False)[0])
print("flags", *batch(ops, 2, flags=1))
print("empty", *batch(None, 0))
host = ctypes.create_string_buffer(4096)
ops[1].src = ctypes.addressof(host)
print("host source", *batch(ops, 2))
ops[1].src = src + (1 << 16) - 100  # 4096 bytes from here run past the allocation
print("past the end", *batch(ops, 2))
many = (Params * 4097)()
print("too many", *batch(many, 4097))
buf = ctypes.create_string_buffer(8192)
size = ctypes.c_size_t(8192)
ok(cu.cuLogsDumpToMemory(ctypes.byref(it), buf, ctypes.byref(size), 0), "log")
for line in buf.value.decode().splitlines():
    print("LOG", line.split("]", 4)[4])
print("OK")
'''


def test_decompression_batches_reach_the_node_driver(node_server: NodeServer) -> None:
    r = run_client(CLIENT, node_server.client_env())
    out = r.stdout.splitlines()
    assert r.returncode == 0 and out and out[-1] == "OK", r.stdout + r.stderr + node_server.log_text()[-2000:]
    assert "batch 801 12345" in out, out  # CUDA_ERROR_NOT_SUPPORTED: no engine, the index as it was
    assert "per-thread 801 12345" in out and "no index 801" in out, out
    assert "flags 1 general" in out and "empty 1 general" in out, out  # the driver's argument checks
    assert "host source 1 1" in out and "past the end 1 1" in out, out  # the worker's check: operation 1
    assert "too many 801 12345" in out, out  # refused in the stub: the index untouched
    logs = [ln[4:] for ln in out if ln.startswith("LOG ")]
    assert logs == ["[cuMemBatchDecompressAsync] the device has no decompression engine"] * 3 + [
        "[cuMemBatchDecompressAsync] flags must be 0",
        "[cuMemBatchDecompressAsync] paramsArray must hold at least one operation"], logs
