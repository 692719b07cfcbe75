"""The client program of the parking fidelity checks, shared by tests/python/test_park_gaps.py (simulated device) and
bench/park_gpu.py (the GPU host): module globals a kernel changed without the client naming them, recorded events
and their times, a moved global's old address in a kernel parameter and a memset, and an allocation's bytes. It
prints "READY <address of its 3 MiB allocation>", waits for a line, then prints a RESULT line that starts with
EXPECTED when everything came back."""

from cuda_ctypes import PRELUDE

# Bumps fg_magic from a kernel five times (the client never names it before the park), records timed events around
# a pause, allocates and fills memory; after "go" it checks the events, bumps once more and reads fg_magic back.
PROGRAM = PRELUDE + r'''
import time
ctx = ctx0()
mod = load_test_module()
bump = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(bump), mod, b"fg_bump_magic"), "getfunction")
st = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(st), 1), "stream")
def launch(add):
    a = ctypes.c_uint32(add)
    params = (ctypes.c_void_p * 1)(ctypes.addressof(a))
    ok(cu.cuLaunchKernel(bump, 1, 1, 1, 1, 1, 1, 0, st, params, None), "launch")
for _ in range(5):
    launch(7)
evs = []
for flags in (0, 0, 0, 2):  # a, b, never recorded, no timing
    e = ctypes.c_void_p(); ok(cu.cuEventCreate(ctypes.byref(e), flags), "event"); evs.append(e)
ev_a, ev_b, ev_never, ev_nt = evs
ok(cu.cuEventRecord(ev_a, st), "record a")
ok(cu.cuStreamSynchronize(st), "sync")
time.sleep(0.05)
ok(cu.cuEventRecord(ev_b, st), "record b")
ok(cu.cuEventRecord(ev_nt, st), "record nt")
ok(cu.cuStreamSynchronize(st), "sync")
def elapsed(x, y):
    ms = ctypes.c_float()
    r = cu.cuEventElapsedTime(ctypes.byref(ms), x, y)
    return r, ms.value
before = (elapsed(ev_a, ev_b), elapsed(ev_a, ev_never)[0], elapsed(ev_a, ev_nt)[0])
# a second copy of the module whose fg_magic the client does look up: its address moves on restore (on the sim)
mod2 = load_test_module()
fill = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fill), mod2, b"fg_fill_u32"), "getfunction fill")
g2, g2size = ctypes.c_uint64(), ctypes.c_size_t()
ok(cu.cuModuleGetGlobal_v2(ctypes.byref(g2), ctypes.byref(g2size), mod2, b"fg_magic"), "getglobal 2")
r, p = alloc(3 << 20); ok(r, "alloc")
ok(cu.cuMemsetD32_v2(ctypes.c_uint64(p), ctypes.c_uint32(0xA5A5A5A5), ctypes.c_size_t((3 << 20) // 4)), "memset")
print("READY", hex(p), flush=True)
sys.stdin.readline()
after = (elapsed(ev_a, ev_b), elapsed(ev_a, ev_never)[0], elapsed(ev_a, ev_nt)[0])
queries = [cu.cuEventQuery(e) for e in (ev_a, ev_b, ev_nt)]
launch(1)
ok(cu.cuStreamSynchronize(st), "sync")
g, gsize = ctypes.c_uint64(), ctypes.c_size_t()
ok(cu.cuModuleGetGlobal_v2(ctypes.byref(g), ctypes.byref(gsize), mod, b"fg_magic"), "getglobal")
val = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(val), g, ctypes.c_size_t(4)), "read magic")
# the old address of mod2's fg_magic, as a kernel argument and a memset destination
arg_p, arg_v, arg_n = ctypes.c_uint64(g2.value), ctypes.c_uint32(0xBEEF), ctypes.c_uint64(1)
params = (ctypes.c_void_p * 3)(ctypes.addressof(arg_p), ctypes.addressof(arg_v), ctypes.addressof(arg_n))
ok(cu.cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, st, params, None), "launch fill")
ok(cu.cuStreamSynchronize(st), "sync")
v2 = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(v2), g2, ctypes.c_size_t(4)), "read magic 2")
ok(cu.cuMemsetD32_v2(g2, ctypes.c_uint32(0xCAFE), ctypes.c_size_t(1)), "memset magic 2")
v3 = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(v3), g2, ctypes.c_size_t(4)), "read magic 2 again")
out = ctypes.create_string_buffer(3 << 20)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(3 << 20)), "dtoh")
print("RESULT magic", hex(val.value), "memory", out.raw == b"\xa5" * (3 << 20), "elapsed_same", after == before,
      "old_global_address", hex(v2.value), hex(v3.value),
      "elapsed_ms", round(before[0][1]), "codes", before[0][0], before[1], before[2], after[0][0], after[1], after[2],
      "queries", queries, flush=True)
'''

# fg_magic: 0x12345678 + 5 * 7 + 1; the moved global written through its old address by a kernel, then a memset
EXPECTED = "RESULT magic 0x1234569c memory True elapsed_same True old_global_address 0xbeef 0xcafe"
