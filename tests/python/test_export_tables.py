"""The driver's private tables as the stub serves them (client_stub/export_tables.c), called the way the CUDA
runtime calls them: table sizes in slot 0, context-local storage per context (a key never stored is NOT_FOUND),
the integrity check's fixed answers, the thread's current context from TOOLS_TLS, a stream's object and id from the
context-identity table (as cuStreamGetId gives it), and an unknown table id refused with CUDA_ERROR_NOT_FOUND.
That the real runtime accepts all of it is shown by the nvcc programs
(test_acceptance_sim.py) and on the GPU (bench/results/acceptance-*.json)."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
def table(hexid):
    t = ctypes.c_void_p()
    r = cu.cuGetExportTable(ctypes.byref(t), (ctypes.c_ubyte * 16)(*bytes.fromhex(hexid)))
    return r, t.value
def slot(t, i):
    return ctypes.c_void_p.from_address(t + 8 * i).value
ctx = ctx0()
r, cudart = table("6bd5fb6c5bf4e74a8987d93912fd9df9")
print("cudart", r, slot(cudart, 0))
r, cls = table("c693336e1121df11a8c368f355d89593")
PUT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
DEL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
GET = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_void_p)
put, delete, get = PUT(slot(cls, 0)), DEL(slot(cls, 1)), GET(slot(cls, 2))
v = ctypes.c_void_p(99)
print("cls missing", get(ctypes.byref(v), None, 0x1234), v.value)
print("cls put", put(None, 0x1234, 0x5678, None))
print("cls get", get(ctypes.byref(v), ctx, 0x1234), v.value)
print("cls delete", delete(None, 0x1234), get(ctypes.byref(v), None, 0x1234))
r, integ = table("d4082055bde6704b8d34ba123c66e1f2")
CHECK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64 * 2))
out = (ctypes.c_uint64 * 2)()
print("integrity", slot(integ, 0), CHECK(slot(integ, 1))(13000, 1700000000, ctypes.byref(out)),
      hex(out[0]), hex(out[1]))
r, tls = table("42d85a8123f6cb478298f6e78a3aecdc")
CUR = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
c = ctypes.c_void_p()
print("tls current", CUR(slot(tls, 2))(ctypes.byref(c)), c.value == ctx.value)
r, ident = table("21318c60971432488ca641ff7324c8f2")
FROM = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int)
SID = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64))
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
want = ctypes.c_ulonglong()
ok(cu.cuStreamGetId(s, ctypes.byref(want)), "stream id")
obj, got, null_obj = ctypes.c_void_p(), ctypes.c_uint64(), ctypes.c_void_p()
print("ident size", slot(ident, 0), "from", FROM(slot(ident, 51))(ctx, s, ctypes.byref(obj), 0),
      "id", SID(slot(ident, 39))(ctx, obj, ctypes.byref(got)), got.value == want.value and want.value != 0,
      "null", FROM(slot(ident, 51))(ctx, None, ctypes.byref(null_obj), 1), null_obj.value)
print("unknown", table("00112233445566778899aabbccddeeff"))
'''



def test_private_tables_answer_like_the_driver(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "cudart 0 104" in out  # 13 slots
    assert "cls missing 500 None" in out  # CUDA_ERROR_NOT_FOUND, value cleared
    assert "cls put 0" in out and "cls get 0 22136" in out  # NULL context = the current one
    assert "cls delete 0 500" in out
    assert "integrity 24 0 0x3341181c03cb675c 0x8ed383aa1f4cd1e8" in out  # version ending in 0: fixed answer
    assert "tls current 0 True" in out
    assert "ident size 744 from 0 id 0 True null 0 2" in out  # 93 slots; NULL stream, per-thread: PER_THREAD
    assert "unknown (500, None)" in out
