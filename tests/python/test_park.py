"""Parking on the simulated device: a paged-out session's whole state leaves its node (a directory park store), its
worker exits, and the session comes back in a new worker, on a freshly started node server, with every byte,
address and handle id, the moment the client calls again; an unparkable session stays paged with its reason; a
node killed under a session without parked state gives the client a CUDA error, not a hang.

The simulated device keeps "device" memory in host memfds and puts module globals wherever mmap does (so they move
on restore, and the translation of copies to them is exercised); nothing here says anything about a GPU."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, start_server, stop_server
from e2e_helpers import wait_log as _wait_log

# A session with contexts, a module, functions, a stream and an event, allocations filled with patterns and a
# module global written by the client. After "READY" it waits for a line, then checks every byte, address and
# handle, launches a kernel and prints what it computed.
PROGRAM = PRELUDE + r'''
import hashlib
ctx = ctx0()
mod = load_test_module()
fn = ctypes.c_void_p()
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_fill_u32"), "getfunction")
st = ctypes.c_void_p()
ok(cu.cuStreamCreateWithPriority(ctypes.byref(st), 1, -1), "stream")
ev = ctypes.c_void_p()
ok(cu.cuEventCreate(ctypes.byref(ev), 2), "event")
g, gsize = ctypes.c_uint64(), ctypes.c_size_t()
have_global = cu.cuModuleGetGlobal_v2(ctypes.byref(g), ctypes.byref(gsize), mod, b"fg_magic") == 0
if have_global:
    ok(cu.cuMemcpyHtoD_v2(g, b"\x5a" * gsize.value, gsize), "global")
bufs = []
for i, n in enumerate([4096, 1 << 20, 5 << 20, 33 << 20]):
    r, p = alloc(n); ok(r, "alloc")
    data = (hashlib.sha256(str(i).encode()).digest() * (n // 32 + 1))[:n]
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), data, ctypes.c_size_t(n)), "htod")
    bufs.append((p, n, data))
print("READY", ctx.value, mod.value, fn.value, st.value, ev.value, [b[0] for b in bufs], flush=True)
sys.stdin.readline()
bad = []
for p, n, data in bufs:
    out = ctypes.create_string_buffer(n)
    ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh")
    if out.raw != data: bad.append(hex(p))
if have_global:
    out = ctypes.create_string_buffer(gsize.value)
    ok(cu.cuMemcpyDtoH_v2(out, g, gsize), "global back")
    if out.raw != b"\x5a" * gsize.value: bad.append("global")
prio, flags = ctypes.c_int(), ctypes.c_uint()
ok(cu.cuStreamGetPriority(st, ctypes.byref(prio)), "priority")
ok(cu.cuStreamGetFlags(st, ctypes.byref(flags)), "flags")
ok(cu.cuEventRecord(ev, st), "record")
ok(cu.cuEventSynchronize(ev), "event sync")
cur = ctypes.c_void_p()
ok(cu.cuCtxGetCurrent(ctypes.byref(cur)), "current")
p, n, _ = bufs[1]
arg_p, arg_v, arg_n = ctypes.c_uint64(p), ctypes.c_uint32(0xC0FFEE), ctypes.c_uint64(n // 4)
params = (ctypes.c_void_p * 3)(ctypes.addressof(arg_p), ctypes.addressof(arg_v), ctypes.addressof(arg_n))
ok(cu.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, st, params, None), "launch")
ok(cu.cuStreamSynchronize(st), "sync")
out = ctypes.create_string_buffer(n)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh after launch")
print("RESULT", "bad=" + ",".join(bad), "prio", prio.value, "flags", flags.value, "ctx", cur.value == ctx.value,
      hashlib.sha256(out.raw).hexdigest(), flush=True)
'''


def _run(env: dict[str, str], between: object = None) -> tuple[str, str, str]:
    p = subprocess.Popen([sys.executable, "-P", "-c", PROGRAM], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None
    ready = p.stdout.readline().strip()
    assert ready.startswith("READY"), ready + (p.stderr.read() if p.stderr else "")
    if callable(between):
        between()
    out, err = p.communicate("go\n", timeout=120)
    return ready, out.strip(), err


def test_parked_session_resumes_on_a_new_node_server_with_every_byte_address_and_id(tmp_path: Path) -> None:
    store = tmp_path / "park-store"
    (tmp_path / "ref").mkdir()
    ref = start_server(tmp_path / "ref")
    try:
        _ready0, plain, _ = _run(ref.client_env())
    finally:
        stop_server(ref)
    assert plain.startswith("RESULT bad= prio -1 flags 1 ctx True"), plain

    a = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store))
    port = a.endpoint.rsplit(":", 1)[1]
    b: list[NodeServer] = []

    def park_then_replace_node() -> None:
        _wait_log(a, r"park of session \w+: parked sessions/\w+ (\d+)")
        a.proc.kill()  # kill -9: the node that ran it is gone; a new node server takes its address
        a.proc.wait()
        assert not list(store.glob("sessions/*/state.tmp*"))
        (tmp_path / "b").mkdir()
        b.append(start_server(tmp_path / "b", "--park-store", str(store), port=int(port)))

    try:
        ready, out, err = _run(a.client_env(FARGPU_RESUME_TIMEOUT_S="60", FARGPU_LOG="info"),
                                park_then_replace_node)
        assert out == plain, out + "\n" + err  # every byte, the global, the stream's priority and flags, the kernel
        assert "resumed on" in err, err
        log_b = b[0].log_text()
        assert "restored a parked session" in log_b, log_b
        # restored at most once: the parked state is gone once the session went on
        assert not (store / "sessions").exists() or not any((store / "sessions").rglob("session.json*"))
    finally:
        stop_server(a)
        for s in b:
            stop_server(s)


UNPARKABLE = PRELUDE + r'''
ctx0()
r, p = alloc(1 << 20); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(7), ctypes.c_size_t(1 << 20)), "memset")
BLOCKER
print("READY", flush=True)
sys.stdin.readline()
out = ctypes.create_string_buffer(16)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(16)), "dtoh")
print("SAME" if out.raw == bytes([7]) * 16 else "DIFFERENT", flush=True)
'''

# What keeps a session from parking, and a word its reason must name.
BLOCKERS = {
    "vmm": (  # the client's own VMM reservation: parking does not restore those
        """va = ctypes.c_uint64()
ok(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(2 << 20), ctypes.c_size_t(0), ctypes.c_uint64(0),
                          ctypes.c_ulonglong(0)), "reserve")""",
        "VMM",
    ),
    "green": (  # a green context: parking does not rebuild SM partitions
        """res = ctypes.create_string_buffer(144)
ok(cu.cuDeviceGetDevResource(0, res, 1), "device resource")  # CU_DEV_RESOURCE_TYPE_SM
desc = ctypes.c_void_p()
ok(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "descriptor")
green = ctypes.c_void_p()
ok(cu.cuGreenCtxCreate(ctypes.byref(green), desc, 0, 1), "green context")  # CU_GREEN_CTX_DEFAULT_STREAM""",
        "green contexts",
    ),
    "descriptor": (  # a resource descriptor alone: the driver has no call that destroys one
        """res = ctypes.create_string_buffer(144)
ok(cu.cuDeviceGetDevResource(0, res, 1), "device resource")
desc = ctypes.c_void_p()
ok(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "descriptor")""",
        "descriptors",
    ),
    "texture": (  # a texture object over the allocation: its value is the driver's, which a new worker may not repeat
        """import struct
rd = ctypes.create_string_buffer(struct.pack("<iiQiiQ", 2, 0, p, 1, 1, 1 << 20), 144)  # LINEAR, uint8 x 1
td = ctypes.create_string_buffer(104)
tex = ctypes.c_uint64()
ok(cu.cuTexObjectCreate(ctypes.byref(tex), rd, td, None), "texture object")""",
        "texture",
    ),
}


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_unparkable_session_stays_paged_with_its_reason(tmp_path: Path, blocker: str) -> None:
    code, word = BLOCKERS[blocker]
    s = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(tmp_path / "store"))
    try:
        program = UNPARKABLE.replace("BLOCKER", code)
        p = subprocess.Popen([sys.executable, "-P", "-c", program], env=s.client_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
        m = _wait_log(s, r"session \w+ was not parked: (unparkable: .*)")
        assert word in m.group(1), m.group(1)
        assert not (tmp_path / "store" / "sessions").exists() or not any((tmp_path / "store" / "sessions").iterdir())
        out, err = p.communicate("go\n", timeout=60)  # still paged on its node, and it carries on
        assert out.strip() == "SAME", out + err
    finally:
        stop_server(s)


KEEPS_CALLING = PRELUDE + r'''
import time
ctx0()
r, p = alloc(1 << 20); ok(r, "alloc")
print("READY", flush=True)
t0 = time.monotonic()
while True:
    r = cu.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(1), ctypes.c_size_t(1 << 20))
    if r != 0:
        print("ERROR", r, round(time.monotonic() - t0, 1), flush=True)
        break
    time.sleep(0.02)
'''


def test_killed_node_gives_a_cuda_error_not_a_hang(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--park-store", str(tmp_path / "store"))
    try:
        p = subprocess.Popen([sys.executable, "-P", "-c", KEEPS_CALLING],
                             env=s.client_env(FARGPU_RESUME_TIMEOUT_S="5"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.5)
        workers = subprocess.run(["pgrep", "-P", str(s.proc.pid)], capture_output=True, text=True).stdout.split()
        s.proc.kill()  # kill -9 of the node server, and of its session worker: the node is gone
        for w in workers:
            subprocess.run(["kill", "-9", w], check=False)
        out, err = p.communicate(timeout=60)
        assert out.startswith("ERROR 46"), out + err  # CUDA_ERROR_DEVICE_UNAVAILABLE, at the next call
    finally:
        stop_server(s)


# After "go": an async memset (a small batch the sender thread sends) and an async copy of 200 KiB from pageable
# memory (inline: one batch of over 64 KiB without a reply, which the stub keeps for a resume by taking over its
# buffer), a pause, then a synchronising read of what they wrote.
LATE_WORK = PRELUDE + r'''
import time
ctx0()
st = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(st), 1), "stream")
r, p = alloc(4 << 20); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(1), ctypes.c_size_t(4 << 20)), "memset")
ok(cu.cuStreamSynchronize(st), "sync")
print("READY", flush=True)
sys.stdin.readline()
ok(cu.cuMemsetD8Async(ctypes.c_uint64(p), ctypes.c_ubyte(0xAB), ctypes.c_size_t(4 << 20), st), "async memset")
time.sleep(0.05)  # the stub's sender thread sends the memset's batch on its own (a small frame, copied to be kept)
pattern = bytes(range(256)) * 800
src = ctypes.create_string_buffer(pattern, len(pattern))
ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(p), src, ctypes.c_size_t(len(pattern)), st), "async htod")
ctypes.memset(src, 0, len(pattern))  # taken at the call
time.sleep(1.0)
ok(cu.cuStreamSynchronize(st), "sync")
out = ctypes.create_string_buffer(4096)
ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p + (4 << 20) - 4096), ctypes.c_size_t(4096)), "dtoh")
back = ctypes.create_string_buffer(len(pattern))
ok(cu.cuMemcpyDtoH_v2(back, ctypes.c_uint64(p), ctypes.c_size_t(len(pattern))), "dtoh copy")
print("SAME" if out.raw == b"\xab" * 4096 and back.raw == pattern else "DIFFERENT", flush=True)
'''


def _late_work(s: NodeServer) -> tuple[str, str]:
    p = subprocess.Popen([sys.executable, "-P", "-c", LATE_WORK], env=s.client_env(FARGPU_LOG="info"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "READY"
    _wait_log(s, r"session \w+: its state is written")  # the park is storing it: the client sends work now
    out, err = p.communicate("go\n", timeout=60)
    return out.strip(), err


def test_work_sent_during_a_park_calls_the_park_off(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(tmp_path / "store"),
                     env_extra={"FARGPU_PARK_TEST_COMMIT_DELAY_S": "2"})
    try:
        out, err = _late_work(s)
        assert out == "SAME", out + err
        _wait_log(s, r"was not parked: the client sent work while the session was being parked")
        assert "resumed on" not in err
    finally:
        stop_server(s)


def test_a_batch_the_old_worker_never_applied_is_sent_again(tmp_path: Path) -> None:
    # The worker commits although the async batch is waiting unread (a test switch): the stub must send it again
    # to the restored session, which says which batch it applied last.
    s = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(tmp_path / "store"),
                     env_extra={"FARGPU_PARK_TEST_COMMIT_DELAY_S": "2", "FARGPU_PARK_TEST_COMMIT_ANYWAY": "1"})
    try:
        out, err = _late_work(s)
        assert out == "SAME", out + err
        m = re.search(r"resumed on \S+ after batch (\d+), (\d+) batch\(es\) sent again", err)
        assert m and int(m.group(2)) >= 3, err  # the async memset, the async copy and the synchronising call
        assert "restored a parked session" in s.log_text()
    finally:
        stop_server(s)


def test_a_client_on_the_node_host_resumes_over_the_unix_socket(tmp_path: Path) -> None:
    # A co-located client (unix socket, shared memory offered at its first HELLO) parks and resumes over the socket.
    sock, store = str(tmp_path / "node.sock"), str(tmp_path / "store")
    a = start_server(tmp_path, "--unix", sock, "--idle-page-out", "1", "--idle-park", "1", "--park-store", store)
    b: list[NodeServer] = []

    def park_then_replace_node() -> None:
        _wait_log(a, r"park of session \w+: parked sessions/\w+ (\d+)")
        a.proc.kill()
        a.proc.wait()
        (tmp_path / "b").mkdir()
        b.append(start_server(tmp_path / "b", "--unix", sock, "--park-store", store))

    try:
        _, out, err = _run(a.client_env(FARGPU_SERVER=sock, FARGPU_LOG="info"), park_then_replace_node)
        assert out.startswith("RESULT bad= prio -1 flags 1 ctx True"), out + "\n" + err
        assert "resumed on " + sock in err, err
    finally:
        stop_server(a)
        for s in b:
            stop_server(s)


# The first call after the park is a large copy (bulk pieces over TCP, the staging ring over shared memory): the
# stub hears the server's CLOSE before the copy starts and resumes, instead of breaking in the middle of it.
BULK_FIRST = PRELUDE + r'''
import hashlib
ctx0()
n = 8 << 20
r, p = alloc(n); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(3), ctypes.c_size_t(n)), "memset")
print("READY", flush=True)
sys.stdin.readline()
data = hashlib.sha256(b"after").digest() * (n // 32)
print("HTOD", cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), data, ctypes.c_size_t(n)), flush=True)
out = ctypes.create_string_buffer(n)
print("DTOH", cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), out.raw == data, flush=True)
'''


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_a_large_copy_as_the_first_call_after_a_park_resumes(tmp_path: Path, transport: str) -> None:
    sock, store = str(tmp_path / "node.sock"), str(tmp_path / "store")
    a = start_server(tmp_path, "--unix", sock, "--idle-page-out", "1", "--idle-park", "1", "--park-store", store)
    port = int(a.endpoint.rsplit(":", 1)[1])
    b: list[NodeServer] = []
    env = a.client_env(FARGPU_LOG="info", **({"FARGPU_SERVER": sock} if transport == "shm" else {}))
    p = subprocess.Popen([sys.executable, "-P", "-c", BULK_FIRST], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        _wait_log(a, r"park of session \w+: parked sessions/\w+ (\d+)")
        a.proc.kill()
        a.proc.wait()
        (tmp_path / "b").mkdir()
        b.append(start_server(tmp_path / "b", "--unix", sock, "--park-store", store, port=port))
        out, err = p.communicate("go\n", timeout=120)
        assert "HTOD 0" in out and "DTOH 0 True" in out, out + "\n" + err + b[0].log_text()[-3000:]
        assert "resumed on" in err, err
    finally:
        if p.poll() is None:
            p.kill()
        stop_server(a)
        for s in b:
            stop_server(s)
