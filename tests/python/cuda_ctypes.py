"""A tiny ctypes view of the CUDA driver API for client snippets in the tests: the snippet imports it
from the tests folder and talks to whatever libcuda.so.1 the loader finds (the fargpu stub)."""

from pathlib import Path

# The test kernels (codegen's generated PTX), as load_test_module() in a snippet loads them.
TEST_PTX = Path(__file__).resolve().parents[2] / "fargpu" / "generated" / "test_kernels.ptx"

PRELUDE = r'''
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0:
        print(f"FAIL {what}: {r}"); sys.exit(1)
def ctx0():
    ok(cu.cuInit(0), "cuInit")
    ctx = ctypes.c_void_p()
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain")
    ok(cu.cuCtxSetCurrent(ctx), "setcurrent")
    return ctx
def alloc(n):
    p = ctypes.c_uint64()
    r = cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n))
    return r, p.value
def meminfo():
    f, t = ctypes.c_size_t(), ctypes.c_size_t()
    ok(cu.cuMemGetInfo_v2(ctypes.byref(f), ctypes.byref(t)), "meminfo")
    return f.value, t.value
def test_ptx_image():
    return open(__TEST_PTX__, "rb").read() + b"\0"
def load_test_module():
    mod = ctypes.c_void_p()
    ok(cu.cuModuleLoadData(ctypes.byref(mod), test_ptx_image()), "load")
    return mod
'''.replace("__TEST_PTX__", repr(str(TEST_PTX)))


# PRELUDE with the two short ctypes names the stream-ordered allocation and graph memory snippets write everywhere:
# V for a handle (a void pointer) and U64 for a device address.
TYPED_PRELUDE = PRELUDE + r'''
V = ctypes.c_void_p
U64 = ctypes.c_uint64
'''


# The opening of a snippet that loads the driver library named by argv[1] (the simulated device directly, or the
# stub), with a current primary context and a non-blocking stream `s`; failures print a JSON line, as those tests read.
SIM_DIRECT = r'''
import ctypes, json, sys
cu = ctypes.CDLL(sys.argv[1])
V, U64 = ctypes.c_void_p, ctypes.c_uint64
def ok(r, what):
    if r != 0:
        print(json.dumps({"fail": what, "rc": r})); sys.exit(1)
ok(cu.cuInit(0), "init")
ctx = V(); ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain"); ok(cu.cuCtxSetCurrent(ctx), "set")
s = V(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
'''


# A session that holds 512 MiB and, for every line on stdin, fills it with the next value and checks it back
# ("DONE n" or "WRONG n"): the paging tests let several of these take turns on a node with room for fewer.
TAKE_TURNS = PRELUDE + r'''
ctx0()
n = 512 << 20
r, p = alloc(n); ok(r, "alloc")
value = 0
for line in sys.stdin:
    value += 1
    ok(cu.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(value), ctypes.c_size_t(n)), "memset")
    out = ctypes.create_string_buffer(4096)
    ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p + n - 4096), ctypes.c_size_t(4096)), "dtoh")
    print("DONE" if out.raw == bytes([value]) * 4096 else "WRONG", value, flush=True)
'''
