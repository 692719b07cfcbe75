"""The stub's cache of unchanging answers (client_stub/memo.c), end to end with the simulated device: repeated
device-attribute and occupancy queries cost one round trip, a call that changes a function attribute empties
the cache so the new value is seen, capture queries are answered locally while no capture is under way, and
FARGPU_STATS=1 reports what was sent and what was answered from the cache.

The simulated device is a test double: these tests are about what crosses the wire."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
ctx0()
v = ctypes.c_int()
for _ in range(500):
    ok(cu.cuDeviceGetAttribute(ctypes.byref(v), 16, 0), "attr")  # multiprocessor count
print("sms", v.value)
mod, fn = load_test_module(), ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_vadd"), "getfunction")
MAX_DYN = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
a, b = ctypes.c_int(), ctypes.c_int()
for _ in range(100):
    ok(cu.cuFuncGetAttribute(ctypes.byref(a), MAX_DYN, fn), "getattr")
ok(cu.cuFuncSetAttribute(fn, MAX_DYN, 65536), "setattr")
ok(cu.cuFuncGetAttribute(ctypes.byref(b), MAX_DYN, fn), "getattr after set")
print("maxdyn", a.value, b.value)
for _ in range(20):  # libraries set the same attribute before every launch: no round trip, no lost cache
    ok(cu.cuFuncSetAttribute(fn, MAX_DYN, 65536), "same set")
ok(cu.cuFuncGetAttribute(ctypes.byref(b), MAX_DYN, fn), "getattr after same sets")
st = ctypes.c_int(7)
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
for _ in range(100):
    ok(cu.cuStreamIsCapturing(s, ctypes.byref(st)), "iscapturing")
print("capturing", st.value)
mode = ctypes.c_int(2)  # RELAXED
ok(cu.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)), "exchange")
print("old mode", mode.value)  # GLOBAL (0) before
for _ in range(49):  # each exchange hands back the previous mode: an odd count ends on RELAXED
    ok(cu.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)), "exchange")
print("mode after 49", mode.value)
f, act = ctypes.c_uint(), ctypes.c_int()
for _ in range(50):
    ok(cu.cuDevicePrimaryCtxGetState(0, ctypes.byref(f), ctypes.byref(act)), "state")
print("active", act.value)
'''



def _counts(stderr: str, op: str) -> tuple[int, int]:
    m = re.search(rf"^\s+{op}\s+\w+\s+sent\s+(\d+)\s+cached\s+(\d+)", stderr, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def test_unchanging_answers_are_cached_and_invalidated(server: NodeServer, tmp_path: Path) -> None:
    proof = tmp_path / "proof.jsonl"
    r = run_client(CLIENT,
                   server.client_env(FARGPU_STATS="1", FARGPU_PROOF_FILE=str(proof)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sms 132" in r.stdout
    assert re.search(r"maxdyn (\d+) 65536", r.stdout), r.stdout
    assert "capturing 0" in r.stdout
    assert _counts(r.stderr, "cuDeviceGetAttribute") == (1, 499)
    sent, cached = _counts(r.stderr, "cuFuncGetAttribute")
    assert sent == 2 and cached == 100, r.stderr  # the change emptied the cache; identical sets did not
    assert _counts(r.stderr, "cuFuncSetAttribute") == (1, 20)
    assert _counts(r.stderr, "cuStreamIsCapturing") == (0, 0)  # answered without a record at all
    assert "old mode 0" in r.stdout and "mode after 49 2" in r.stdout, r.stdout
    assert _counts(r.stderr, "cuThreadExchangeStreamCaptureMode") == (0, 0)  # kept in the stub: no capture
    assert _counts(r.stderr, "cuDevicePrimaryCtxGetState") == (1, 49)
    assert "active 1" in r.stdout
    sync_sent = json.loads(proof.read_text().splitlines()[-1])["sync_calls_sent"]
    assert 0 < sync_sent < 40, sync_sent


SCOPED_CLIENT = PRELUDE + r'''
ctx0()
v = ctypes.c_int()
mod, fa, fb = load_test_module(), ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fa), mod, b"fg_vadd"), "getfunction a")
ok(cu.cuModuleGetFunction(ctypes.byref(fb), mod, b"fg_scale"), "getfunction b")
lib, k, kf = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuLibraryLoadData(ctypes.byref(lib), test_ptx_image(), None, None, 0, None, None, 0), "library")
ok(cu.cuLibraryGetKernel(ctypes.byref(k), lib, b"fg_axpb"), "kernel")
ok(cu.cuKernelGetFunction(ctypes.byref(kf), k), "kernel function")
MAX_DYN = 8
def get(f):
    r = ctypes.c_int()
    ok(cu.cuFuncGetAttribute(ctypes.byref(r), MAX_DYN, f), "getattr")
    return r.value
ok(cu.cuDeviceGetAttribute(ctypes.byref(v), 16, 0), "attr")
before = (get(fa), get(fb), get(kf))
# Two functions' attributes set alternately, as libraries do before launches: each set changes only its function.
for i in range(10):
    ok(cu.cuFuncSetAttribute(fa, MAX_DYN, 65536), "set a")
    ok(cu.cuFuncSetAttribute(fb, MAX_DYN, 32768), "set b")
seen = [get(fa), get(fb)]
ok(cu.cuFuncSetAttribute(fa, MAX_DYN, 16384), "set a again")
seen += [get(fa), get(fb)]
# A kernel's attribute is its function's attribute.
ok(cu.cuKernelSetAttribute(MAX_DYN, 12288, k, 0), "kernel set")
seen.append(get(kf))
for _ in range(10):
    ok(cu.cuDeviceGetAttribute(ctypes.byref(v), 16, 0), "attr")
print("before", before, "seen", seen)
'''


def test_attribute_setters_forget_only_what_they_change(server: NodeServer) -> None:
    """Setting one function's (or kernel's) attribute forgets that object's cached answers only: another function's
    answers and device attributes stay cached, identical repeats of alternating sets cost nothing, and every new
    value is seen — including through the function linked to a kernel."""
    r = run_client(SCOPED_CLIENT, server.client_env(FARGPU_STATS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"seen \[(\d+), (\d+), (\d+), (\d+), (\d+)\]", r.stdout)
    assert m, r.stdout
    assert [int(x) for x in m.groups()] == [65536, 32768, 16384, 32768, 12288], r.stdout
    assert _counts(r.stderr, "cuFuncSetAttribute") == (3, 18), r.stderr  # a, b, then a's new value
    assert _counts(r.stderr, "cuKernelSetAttribute") == (1, 0), r.stderr
    # fa, fb, kf once each; fa and fb after their first sets; fa after its new value; kf after the kernel's set.
    assert _counts(r.stderr, "cuFuncGetAttribute") == (7, 1), r.stderr
    assert _counts(r.stderr, "cuDeviceGetAttribute") == (1, 10), r.stderr


TWO_ATTRIBUTES_CLIENT = PRELUDE + r'''
ctx0()
lib, k, kf = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuLibraryLoadData(ctypes.byref(lib), test_ptx_image(), None, None, 0, None, None, 0), "library")
ok(cu.cuLibraryGetKernel(ctypes.byref(k), lib, b"fg_axpb"), "kernel")
ok(cu.cuKernelGetFunction(ctypes.byref(kf), k), "kernel function")
MAX_DYN, CARVEOUT = 8, 9
def get(attr):  # through the linked function, which every set below changes
    r = ctypes.c_int()
    ok(cu.cuFuncGetAttribute(ctypes.byref(r), attr, kf), "function getattr")
    return r.value
# Two attributes of one kernel set before every launch, as CUTLASS-style kernels in cuBLASLt are: after the first
# round, neither set forgets the other.
for _ in range(10):
    ok(cu.cuKernelSetAttribute(MAX_DYN, 12288, k, 0), "set dyn")
    ok(cu.cuKernelSetAttribute(CARVEOUT, 50, k, 0), "set carveout")
seen = [get(MAX_DYN), get(CARVEOUT)]
# The linked function changes the same attribute: the kernel's cached set of it is forgotten, so setting it back
# reaches the node; the other attribute's set stays answered here.
ok(cu.cuFuncSetAttribute(kf, MAX_DYN, 4096), "function set dyn")
seen.append(get(MAX_DYN))
ok(cu.cuKernelSetAttribute(MAX_DYN, 12288, k, 0), "set dyn back")
ok(cu.cuKernelSetAttribute(CARVEOUT, 50, k, 0), "set carveout again")
seen += [get(MAX_DYN), get(CARVEOUT)]
# A new value of one attribute, then the old one: both reach the node.
ok(cu.cuKernelSetAttribute(CARVEOUT, 25, k, 0), "carveout 25")
ok(cu.cuKernelSetAttribute(CARVEOUT, 50, k, 0), "carveout 50")
seen.append(get(CARVEOUT))
print("seen", seen)
'''


def test_sets_of_different_attributes_of_one_kernel_do_not_forget_each_other(server: NodeServer) -> None:
    """A library that sets two attributes of one kernel before each launch pays one round trip per attribute, not
    one per launch; a set of the same attribute (through the kernel or its linked function) still forgets the old
    answer, so every changed value reaches the node."""
    r = run_client(TWO_ATTRIBUTES_CLIENT, server.client_env(FARGPU_STATS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"seen \[([\d, ]+)\]", r.stdout)
    assert m, r.stdout
    assert [int(x) for x in m.group(1).split(",")] == [12288, 50, 4096, 12288, 50, 50], r.stdout
    # 2 in the first round; dyn once after the function's set; carveout 25 and 50.
    assert _counts(r.stderr, "cuKernelSetAttribute") == (5, 19), r.stderr
    assert _counts(r.stderr, "cuFuncSetAttribute") == (1, 0), r.stderr


LIMITS_CLIENT = PRELUDE + r'''
ctx0()
v = ctypes.c_size_t()
HEAP, STACK = 2, 0  # CU_LIMIT_MALLOC_HEAP_SIZE, CU_LIMIT_STACK_SIZE
for _ in range(20):
    ok(cu.cuCtxGetLimit(ctypes.byref(v), HEAP), "heap")
first = v.value
ok(cu.cuCtxSetLimit(HEAP, ctypes.c_size_t(16 << 20)), "set heap")
ok(cu.cuCtxGetLimit(ctypes.byref(v), HEAP), "heap after set")
after = v.value
for _ in range(5):
    ok(cu.cuCtxGetLimit(ctypes.byref(v), STACK), "stack")
print("limits", first, after, v.value, cu.cuCtxGetLimit(ctypes.byref(v), 99))
'''


def test_context_limits_are_cached_except_the_ones_the_driver_changes(server: NodeServer) -> None:
    """A context limit is asked once until cuCtxSetLimit changes one (then the new value is seen); the stack size,
    which the driver raises by itself for a kernel that needs more, is asked every time; an unknown limit is the
    node's error."""
    r = run_client(LIMITS_CLIENT, server.client_env(FARGPU_STATS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "limits 8388608 16777216 1024 215" in r.stdout, r.stdout  # 215: CUDA_ERROR_UNSUPPORTED_LIMIT
    # heap: once, once after the set; stack: 5 times; the unknown limit once (errors are not cached).
    assert _counts(r.stderr, "cuCtxGetLimit") == (8, 19), r.stderr
    assert _counts(r.stderr, "cuCtxSetLimit") == (1, 0), r.stderr
