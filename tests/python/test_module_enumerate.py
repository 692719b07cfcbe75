"""A module's functions without their names (client_stub/module.c, server/replay/module.c): cuModuleGetFunctionCount
and cuModuleEnumerateFunctions give the module's functions, the same handles (with parameter layouts) as
cuModuleGetFunction gives for their names, and the private table cuFFT walks a module's functions with (6e163fbe
slot 7: a visitor called once per function, the count returned) answers from them. End to end with the real stub,
node agent, worker and simulated device."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
ctx0()
mod = load_test_module()
n = ctypes.c_uint()
ok(cu.cuModuleGetFunctionCount(ctypes.byref(n), mod), "count")
fns = (ctypes.c_void_p * n.value)()
ok(cu.cuModuleEnumerateFunctions(fns, n.value, mod), "enumerate")
names = []
for f in fns:
    p = ctypes.c_char_p()
    ok(cu.cuFuncGetName(ctypes.byref(p), ctypes.c_void_p(f)), "name")
    names.append(p.value.decode())
byname = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(byname), mod, b"fg_vadd"), "by name")
off, size = ctypes.c_size_t(), ctypes.c_size_t()
ok(cu.cuFuncGetParamInfo(ctypes.c_void_p(fns[names.index("fg_vadd")]), 0, ctypes.byref(off), ctypes.byref(size)),
   "param info")
short = (ctypes.c_void_p * 1)()
print("count", n.value, "names", sorted(names), "same", fns[names.index("fg_vadd")] == byname.value,
      "param0", off.value, size.value,
      "too small", cu.cuModuleEnumerateFunctions(short, 1, mod))
t = ctypes.c_void_p()
ok(cu.cuGetExportTable(ctypes.byref(t), (ctypes.c_ubyte * 16)(*bytes.fromhex("6e163fbeb958444d835ce182aff1991e"))),
   "table")
VISIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64)
WALK = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64,
                        ctypes.c_uint64, ctypes.c_uint64)
seen = []
visit = VISIT(lambda opaque, fn, owner: seen.append((opaque, fn, owner)))
walk = WALK(ctypes.c_void_p.from_address(t.value + 8 * 7).value)
got = walk(0, mod.value, ctypes.cast(visit, ctypes.c_void_p).value, 77, mod.value, 0)
def name_of(f):
    p = ctypes.c_char_p()
    ok(cu.cuFuncGetName(ctypes.byref(p), ctypes.c_void_p(f)), "walked name")
    return p.value.decode()
print("walk", got, len(seen), all(o == 77 and w == mod.value for o, _, w in seen),
      sorted(name_of(f) for _, f, _ in seen) == sorted(names))
'''



def test_enumerated_functions_are_the_named_ones(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    out = r.stdout
    names = "['fg_axpb', 'fg_bump_magic', 'fg_fill_u32', 'fg_hello', 'fg_scale', 'fg_vadd']"
    assert f"count 6 names {names} same True" in out, out
    assert "param0 0 8" in out, out  # fg_vadd's first parameter: a pointer at offset 0
    assert "too small 1" in out, out  # CUDA_ERROR_INVALID_VALUE: the array must hold every function
    assert "walk 6 6 True True" in out, out
