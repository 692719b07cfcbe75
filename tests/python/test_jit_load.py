"""JIT options of module and library loads through fargpu (client_stub/module.c, library.c, jit_options.c;
server/replay/module.c, jit_options.c; server/sim/sim_module.c), end to end with the real stub, node agent, worker
and simulated device: cuModuleLoadDataEx and cuLibraryLoadData hand their options to the node's driver (the sim
writes an info log only when CU_JIT_LOG_VERBOSE reached it) and its outputs come back into the application's
arrays: the info and error logs, their sizes (bytes written), the wall time; a malformed PTX fails with the error
log's text in the application's buffer (cut to a small buffer, NUL-terminated); options that cannot be honoured
(arrays of client symbols) are refused with CUDA_ERROR_NOT_SUPPORTED, unknown ones with CUDA_ERROR_INVALID_VALUE."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
import struct
WALL, INFO, INFO_N, ERR, ERR_N, OPT_LEVEL, VERBOSE, SYMBOL_NAMES, SYMBOL_COUNT = 2, 3, 4, 5, 6, 7, 12, 17, 19
ctx0()
def opts(pairs):
    n = len(pairs)
    return n, (ctypes.c_int * n)(*[k for k, _ in pairs]), (ctypes.c_void_p * n)(*[x for _, x in pairs])
def wall(v):
    return struct.unpack("<f", struct.pack("<Q", v or 0)[:4])[0]
def load(kind, image, n, o, v):
    h = ctypes.c_void_p()
    if kind == "module":
        r = cu.cuModuleLoadDataEx(ctypes.byref(h), image, n, o, v)
    else:
        r = cu.cuLibraryLoadData(ctypes.byref(h), image, o, v, n, None, None, 0)
    return r, h
bad = ctypes.c_char_p(b".version 8.0\n.target sm_90\n.entry broken(\n")
for kind in ("module", "library"):
    info, err = ctypes.create_string_buffer(4096), ctypes.create_string_buffer(4096)
    n, o, v = opts([(WALL, 0), (INFO, ctypes.addressof(info)), (INFO_N, 4096), (ERR, ctypes.addressof(err)),
                    (ERR_N, 4096), (OPT_LEVEL, 3), (VERBOSE, 1)])
    r, h = load(kind, test_ptx_image(), n, o, v)
    print(kind, "load", r, "handle", bool(h.value))
    print(kind, "info", info.value.decode(), "| size", v[2] == len(info.value) > 0, "| error size", v[4] or 0,
          "| wall", wall(v[0]) >= 0.0)
    if kind == "module":
        f = ctypes.c_void_p()
        print(kind, "function", cu.cuModuleGetFunction(ctypes.byref(f), h, b"fg_vadd"))
    info, err = ctypes.create_string_buffer(4096), ctypes.create_string_buffer(4096)
    n, o, v = opts([(INFO, ctypes.addressof(info)), (INFO_N, 4096), (ERR, ctypes.addressof(err)), (ERR_N, 4096)])
    r, h = load(kind, test_ptx_image(), n, o, v)
    print(kind, "quiet", r, "info size", v[1] or 0, repr(info.value))
    n, o, v = opts([(ERR_N, 4096), (ERR, ctypes.addressof(err))])  # the size before its buffer
    r, h = load(kind, bad, n, o, v)
    print(kind, "malformed", r, "handle", h.value, "|", err.value.decode(), "| size", v[0] == len(err.value) > 0)
    small = ctypes.create_string_buffer(b"\xff" * 16)
    n, o, v = opts([(ERR, ctypes.addressof(small)), (ERR_N, 16)])
    r, h = load(kind, bad, n, o, v)
    print(kind, "small buffer", r, small.raw[:15] == err.value[:15], small.raw[15], v[1])
    names = (ctypes.c_char_p * 1)(b"sym")
    n, o, v = opts([(SYMBOL_COUNT, 1), (SYMBOL_NAMES, ctypes.addressof(names))])
    print(kind, "client symbols", load(kind, test_ptx_image(), n, o, v)[0])
    n, o, v = opts([(999, 0)])
    print(kind, "unknown option", load(kind, test_ptx_image(), n, o, v)[0])
    print(kind, "no options", load(kind, test_ptx_image(), 0, None, None)[0])
'''


def test_load_jit_options_reach_the_driver_and_come_back(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()[-3000:]
    out = r.stdout.splitlines()
    for kind in ("module", "library"):
        assert f"{kind} load 0 handle True" in out, out
        # The info log is the sim's, written only because CU_JIT_LOG_VERBOSE reached it.
        assert (f"{kind} info info    : the simulated device loaded the image (no JIT: nothing compiled) | size True "
                "| error size 0 | wall True") in out, out
        assert f"{kind} quiet 0 info size 0 b''" in out, out
        line = next(x for x in out if x.startswith(f"{kind} malformed "))
        assert line.startswith(f"{kind} malformed 218 handle None | error   : the simulated device could not load the "
                               "image: CUDA_ERROR_INVALID_PTX"), line  # CUDA_ERROR_INVALID_PTX
        assert line.endswith("| size True"), line
        assert f"{kind} small buffer 218 True 0 15" in out, out
        assert f"{kind} client symbols 801" in out and f"{kind} unknown option 1" in out, out
        assert f"{kind} no options 0" in out, out
    assert "module function 0" in out, out
