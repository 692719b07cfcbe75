"""Device printf reaches the client: the simulated device's fg_hello kernel prints through the worker's stdout
(as the driver prints device output), the engine forwards it as OUTPUT frames before the synchronising call's
reply, and the stub writes it into the client's stdout stream, in order with the program's own output.

The simulated device is a test double; the same path is exercised on the GPU by the acceptance suite's
device_printf program (bench/results/acceptance-*.json)."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
libc = ctypes.CDLL(None)
ctx0()
mod, fn = load_test_module(), ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_hello"), "getfunction")
def hello(v, blocks):
    arg = ctypes.c_int(v)
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.byref(arg), ctypes.c_void_p))
    ok(cu.cuLaunchKernel(fn, blocks, 1, 1, 32, 1, 1, 0, None, params, None), "launch")
libc.printf(b"host: before\n")
hello(42, 3)
ok(cu.cuCtxSynchronize(), "sync")
libc.printf(b"host: between\n")
hello(7, 1)
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
ok(cu.cuStreamSynchronize(s), "stream sync")
libc.printf(b"host: after\n")
libc.fflush(None)
'''



def test_device_printf_reaches_client_stdout_in_order(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    assert r.stdout == (
        "host: before\nfg_hello 42 from 3 block(s)\nhost: between\nfg_hello 7 from 1 block(s)\nhost: after\n"
    ), r.stdout + r.stderr
    # the worker's own output never carries the device text
    assert "fg_hello" not in server.log_text()
