"""JIT linking through fargpu (client_stub/link.c, server/replay/link.c, server/sim/sim_link.c), end to end with the
real stub, node agent, worker and simulated device: a link state made with JIT options, PTX added as data and as a
file (read on the client), completed into an image that loads as a module whose kernel runs and whose global holds
its initial value; the output options (info and error logs, their sizes, the wall time) filled from the node's
answer, for the link's own options and for one input's options, also when the call failed; the linked image stays
readable until cuLinkDestroy; a linked image larger than one reply comes back in pieces; refusals (options that
name client symbols, unknown options, a missing file, a destroyed or foreign state)."""

from __future__ import annotations

from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

EXTRA_PTX = r"""
.version 8.0
.target sm_90
.address_size 64
.visible .global .align 4 .u32 fg_link_tag = 42;
.visible .entry fg_link_only(.param .u64 p, .param .align 16 .b8 q[32])
{
    .shared .align 8 .b8 tile[256];
    ret;
}
"""

CLIENT = PRELUDE + r'''
import struct, os
F = ctypes.c_float
WALL, INFO, INFO_N, ERR, ERR_N, VERBOSE = 2, 3, 4, 5, 6, 12
PTX, CUBIN = 1, 0
ctx0()
def opts(pairs):
    n = len(pairs)
    o = (ctypes.c_int * n)(*[k for k, _ in pairs])
    v = (ctypes.c_void_p * n)(*[x for _, x in pairs])
    return n, o, v
info = ctypes.create_string_buffer(4096)
err = ctypes.create_string_buffer(4096)
n, o, v = opts([(WALL, 0), (INFO, ctypes.addressof(info)), (INFO_N, 4096), (ERR, ctypes.addressof(err)),
                (ERR_N, 4096), (VERBOSE, 1)])
st = ctypes.c_void_p()
ok(cu.cuLinkCreate_v2(n, o, v, ctypes.byref(st)), "create")
a = test_ptx_image()
ok(cu.cuLinkAddData_v2(st, PTX, a, ctypes.c_size_t(len(a)), b"test_kernels.ptx", 0, None, None), "add data")
path = os.environ["EXTRA_PTX_FILE"]
ok(cu.cuLinkAddFile_v2(st, PTX, path.encode(), 0, None, None), "add file")
# A broken input, with an error log of its own: refused, both error logs say why.
own = ctypes.create_string_buffer(64)
n2, o2, v2 = opts([(ERR, ctypes.addressof(own)), (ERR_N, 64)])
bad = b".version 8.0\n.target sm_90\n.entry broken(\n\0"
print("bad ptx", cu.cuLinkAddData_v2(st, PTX, bad, ctypes.c_size_t(len(bad)), b"broken.ptx", n2, o2, v2))
print("own error log", own.value.decode(), "| size", v2[1], len(own.value))
print("link error log mentions it", b"broken.ptx" in err.value, "size", v[4] == len(err.value))
own2 = ctypes.create_string_buffer(64)
n5, o5, v5 = opts([(ERR_N, 64), (ERR, ctypes.addressof(own2))])  # the size before its buffer
cu.cuLinkAddData_v2(st, PTX, bad, ctypes.c_size_t(len(bad)), b"broken.ptx", n5, o5, v5)
print("size option first", own2.value == own.value, v5[0] == len(own2.value))
cubin = ctypes.c_void_p()
size = ctypes.c_size_t()
ok(cu.cuLinkComplete(st, ctypes.byref(cubin), ctypes.byref(size)), "complete")
wall = struct.unpack("<f", struct.pack("<Q", v[0] or 0)[:4])[0]
print("info log:", info.value.decode().strip().replace("\n", " | "))
print("info size matches", v[2] == len(info.value), "wall time ms >= 0", wall >= 0.0 and wall == wall)
image = ctypes.string_at(cubin.value, size.value)
# Other calls in between; the image stays the link state's until cuLinkDestroy.
other = ctypes.c_void_p()
ok(cu.cuLinkCreate_v2(0, None, None, ctypes.byref(other)), "create another")
ok(cu.cuLinkDestroy(other), "destroy another")
print("image unchanged", ctypes.string_at(cubin.value, size.value) == image)
mod = ctypes.c_void_p()
ok(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_void_p(cubin.value)), "load linked")
f = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(f), mod, b"fg_vadd"), "fg_vadd")
g = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(g), mod, b"fg_link_only"), "fg_link_only")
offs = []
for i in range(2):
    off, sz = ctypes.c_size_t(), ctypes.c_size_t()
    ok(cu.cuFuncGetParamInfo(g, i, ctypes.byref(off), ctypes.byref(sz)), "param info")
    offs.append((off.value, sz.value))
smem = ctypes.c_int()
ok(cu.cuFuncGetAttribute(ctypes.byref(smem), 1, g), "shared size")  # CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
print("fg_link_only params", offs, "shared", smem.value)
N = 1000
r, pa = alloc(4 * N); ok(r, "alloc")
r, pb = alloc(4 * N); ok(r, "alloc")
r, pc = alloc(4 * N); ok(r, "alloc")
ha = (F * N)(*[i * 0.5 for i in range(N)])
hb = (F * N)(*[3.0] * N)
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(pa), ha, ctypes.c_size_t(4 * N)), "htod")
ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(pb), hb, ctypes.c_size_t(4 * N)), "htod")
args = [ctypes.c_uint64(pa), ctypes.c_uint64(pb), ctypes.c_uint64(pc), ctypes.c_int(N)]
params = (ctypes.c_void_p * 4)(*[ctypes.addressof(x) for x in args])
ok(cu.cuLaunchKernel(f, 4, 1, 1, 256, 1, 1, 0, None, params, None), "launch")
hc = (F * N)()
ok(cu.cuMemcpyDtoH_v2(hc, ctypes.c_uint64(pc), ctypes.c_size_t(4 * N)), "dtoh")
print("linked kernel ran", all(hc[i] == ha[i] + 3.0 for i in range(N)))
dptr, gsz = ctypes.c_uint64(), ctypes.c_size_t()
ok(cu.cuModuleGetGlobal_v2(ctypes.byref(dptr), ctypes.byref(gsz), mod, b"fg_link_tag"), "global")
tag = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(tag), dptr, ctypes.c_size_t(4)), "read tag")
print("linked global", tag.value, gsz.value)
ok(cu.cuLinkDestroy(st), "destroy")
print("destroy again", cu.cuLinkDestroy(st), "complete destroyed", cu.cuLinkComplete(st, ctypes.byref(cubin),
      ctypes.byref(size)))
print("foreign state", cu.cuLinkAddData_v2(ctypes.c_void_p(0x1230), PTX, a, ctypes.c_size_t(len(a)), None, 0, None,
      None))
# Duplicate definitions, refusals.
st = ctypes.c_void_p()
err2 = ctypes.create_string_buffer(256)
n, o, v = opts([(ERR, ctypes.addressof(err2)), (ERR_N, 256)])
ok(cu.cuLinkCreate(n, o, v, ctypes.byref(st)), "create (unversioned)")
ok(cu.cuLinkAddData(st, PTX, a, ctypes.c_size_t(len(a)), b"first", 0, None, None), "first")
print("twice", cu.cuLinkAddData(st, PTX, a, ctypes.c_size_t(len(a)), b"second", 0, None, None),
      b"multiple definition" in err2.value)
print("missing file", cu.cuLinkAddFile(st, PTX, b"/nonexistent/x.ptx", 0, None, None))
n3, o3, v3 = opts([(17, 0), (19, 0)])
print("symbol names", cu.cuLinkAddData(st, PTX, a, ctypes.c_size_t(len(a)), None, n3, o3, v3))
n4, o4, v4 = opts([(99, 0)])
print("unknown option", cu.cuLinkCreate_v2(n4, o4, v4, ctypes.byref(ctypes.c_void_p())))
print("empty input", cu.cuLinkAddData(st, PTX, a, ctypes.c_size_t(0), None, 0, None, None))
ok(cu.cuLinkDestroy(st), "destroy 2")
# A linked image larger than one reply (32 MiB) comes back in pieces.
if os.environ.get("BIG_PTX_FILE"):
    st = ctypes.c_void_p()
    ok(cu.cuLinkCreate_v2(0, None, None, ctypes.byref(st)), "create big")
    ok(cu.cuLinkAddFile_v2(st, PTX, os.environ["BIG_PTX_FILE"].encode(), 0, None, None), "add big")
    ok(cu.cuLinkComplete(st, ctypes.byref(cubin), ctypes.byref(size)), "complete big")
    text = ctypes.string_at(cubin.value, size.value)
    print("big image", size.value > (32 << 20), text.count(b"100,") == (9 << 20) - 1, text.endswith(b"100};\n\0"))
    big = ctypes.c_void_p()
    ok(cu.cuModuleLoadData(ctypes.byref(big), ctypes.c_void_p(cubin.value)), "load big")
    dptr, gsz = ctypes.c_uint64(), ctypes.c_size_t()
    ok(cu.cuModuleGetGlobal_v2(ctypes.byref(dptr), ctypes.byref(gsz), big, b"fg_big"), "big global")
    last = ctypes.c_uint8()
    ok(cu.cuMemcpyDtoH_v2(ctypes.byref(last), ctypes.c_uint64(dptr.value + gsz.value - 1), ctypes.c_size_t(1)), "rd")
    print("big global", gsz.value, last.value)
    ok(cu.cuLinkDestroy(st), "destroy big")
'''


def _run(server: NodeServer, tmp_path: Path, big: bool = False) -> list[str]:
    extra = tmp_path / "extra.ptx"
    extra.write_text(EXTRA_PTX)
    env = dict(server.client_env(), EXTRA_PTX_FILE=str(extra))
    if big:
        bigf = tmp_path / "big.ptx"
        n = 9 << 20
        bigf.write_bytes(b".version 8.0\n.target sm_90\n.address_size 64\n.visible .global .align 16 .b8 fg_big[%d] = {"
                         % n + b"100," * (n - 1) + b"100};\n")
        env["BIG_PTX_FILE"] = str(bigf)
    r = run_client(CLIENT, env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()[-3000:]
    return r.stdout.splitlines()


def test_link_ptx_data_and_file_load_and_run(server: NodeServer, tmp_path: Path) -> None:
    out = _run(server, tmp_path)
    assert "bad ptx 218" in out, out  # CUDA_ERROR_INVALID_PTX
    own = next(ln for ln in out if ln.startswith("own error log"))
    assert "broken.ptx: PTX input could not be parsed" in own, own
    size = int(own.split("| size ")[1].split()[0])
    assert own.endswith(f"size {size} {size}") and 0 < size < 64, own  # capped at its 64-byte buffer, NUL included
    assert "link error log mentions it True size True" in out, out
    assert "size option first True True" in out, out
    assert "info log: info    : added test_kernels.ptx | info    : added " in "\n".join(out)
    assert any(ln.endswith("info    : linked 2 inputs: 7 kernels, 3 globals") for ln in out), out
    assert "info size matches True wall time ms >= 0 True" in out, out
    assert "image unchanged True" in out, out
    assert "fg_link_only params [(0, 8), (16, 32)] shared 256" in out, out
    assert "linked kernel ran True" in out, out
    assert "linked global 42 4" in out, out
    assert "destroy again 400 complete destroyed 400" in out, out  # CUDA_ERROR_INVALID_HANDLE
    assert "foreign state 400" in out, out
    assert "twice 200 True" in out, out  # CUDA_ERROR_INVALID_IMAGE, "multiple definition" in the error log
    assert "missing file 301" in out, out  # CUDA_ERROR_FILE_NOT_FOUND
    assert "symbol names 801" in out, out  # CUDA_ERROR_NOT_SUPPORTED
    assert "unknown option 1" in out and "empty input 1" in out, out  # CUDA_ERROR_INVALID_VALUE


def test_link_large_image_comes_back_in_pieces(server: NodeServer, tmp_path: Path) -> None:
    out = _run(server, tmp_path, big=True)
    assert "big image True True True" in out, out
    assert f"big global {9 << 20} 100" in out, out
