"""Module globals are device memory for copies: after cuModuleGetGlobal names one, a device-to-device copy into it
(as cudaMemcpyToSymbol with cudaMemcpyDeviceToDevice does) and a unified cuMemcpy out of it work, and
cuMemGetAddressRange answers for it — end to end through the real stub and server on the simulated device.
An address the driver never named stays refused.

The simulated device is a test double: this is about what the server lets a session touch."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
ctx0()
mod = load_test_module()
g, gsize = ctypes.c_uint64(), ctypes.c_size_t()
ok(cu.cuModuleGetGlobal_v2(ctypes.byref(g), ctypes.byref(gsize), mod, b"fg_magic"), "getglobal")
r, src = alloc(4096)
ok(r, "alloc")
val = ctypes.c_uint32(0xC0FFEE)
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(src), ctypes.byref(val), ctypes.c_size_t(4)), "htod")
ok(cu.cuMemcpyDtoD_v2(g, ctypes.c_uint64(src), ctypes.c_size_t(4)), "dtod into the global")
back = ctypes.c_uint32()
ok(cu.cuMemcpy(ctypes.c_uint64(ctypes.addressof(back)), g, ctypes.c_size_t(4)), "unified copy out of the global")
base, size = ctypes.c_uint64(), ctypes.c_size_t()
ok(cu.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), g), "range")
print("value %x size %d range_ok %d" % (back.value, gsize.value, base.value <= g.value < base.value + size.value))
cu.cuMemcpyDtoD_v2(ctypes.c_uint64(g.value + (1 << 30)), ctypes.c_uint64(src), ctypes.c_size_t(4))
print("bogus", cu.cuCtxSynchronize())  # the async copy's error comes back with the next synchronising call
'''



def test_copies_reach_module_globals(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    assert "value c0ffee size 4 range_ok 1" in r.stdout, r.stdout + r.stderr
    assert "bogus 1" in r.stdout  # CUDA_ERROR_INVALID_VALUE: never named, never touched
