"""Host functions and stream callbacks run in the client, in stream order, without blocking the submitting thread:
the stub's callback connection carries RUN/DONE messages for the server's trampolines (client_stub/callbacks.c,
server/replay/callbacks.c). End to end with the real stub, node agent, worker and simulated device.

The simulated device runs stream work at enqueue, so a host function runs while its cuLaunchHostFunc record is
replayed; the tests still show what matters to the client: cuLaunchHostFunc returns before the function has run,
the function runs on another thread, later stream work waits for it, callbacks run in submission order, and async
copies around a host function keep stream order in client memory (the device→host data before it rides with its
RUN message; a host→device copy from pinned memory after it waits for it)."""

from __future__ import annotations

from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client

CLIENT = PRELUDE + r'''
import threading
ctx0()
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
order, released, main_thread = [], threading.Event(), threading.get_ident()
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
STREAMCB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
def first(_):
    # returns only once the main thread has got past cuLaunchHostFunc: a blocking submit would deadlock here
    order.append(("first", released.wait(20), threading.get_ident() != main_thread))
def second(_):
    order.append(("second",))
def third(stream, status, data):
    order.append(("third", status, stream == s.value, data))
f1, f2, f3 = HOSTFN(first), HOSTFN(second), STREAMCB(third)
ok(cu.cuLaunchHostFunc(s, f1, None), "hostfunc 1")
released.set()
ok(cu.cuLaunchHostFunc(s, f2, None), "hostfunc 2")
ok(cu.cuStreamAddCallback(s, f3, ctypes.c_void_p(1234), 0), "callback")
ok(cu.cuStreamSynchronize(s), "sync")
print("ORDER", order)
'''



def test_host_functions_run_in_the_client_in_order_without_blocking(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    assert "ORDER [('first', True, True), ('second',), ('third', 0, True, 1234)]" in r.stdout, r.stdout + r.stderr


def test_a_wrong_attach_key_is_refused(server: NodeServer) -> None:
    """The callback connection names a session and its secret; a made-up secret gets HELLO_ERR."""
    import socket

    import msgpack

    from fargpu.protocol.generated.ops import OPS_HASH
    from fargpu.protocol.wire import PROTO_VERSION, FrameType, decode_header, encode_frame

    host, port = server.endpoint.split(":")
    body = {"proto": PROTO_VERSION, "token": server.token, "ops_hash": OPS_HASH, "attach_session": "nosuchsession",
            "attach_key": "00" * 16}
    with socket.create_connection((host, int(port)), timeout=10) as c:
        c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(body)))
        hdr = decode_header(c.recv(16), 1 << 16)
        assert hdr.type == FrameType.HELLO_ERR


def test_a_host_function_without_callback_connection_is_reported(server: NodeServer) -> None:
    """A session that never opened its callback connection (a hand-written client here) cannot run host
    functions: the function is skipped and the next reply carries CUDA_ERROR_OPERATING_SYSTEM as the deferred
    error of cuLaunchHostFunc — never a silent success."""
    import socket
    import struct

    import msgpack

    from fargpu.protocol.generated.ops import OPS, OPS_HASH
    from fargpu.protocol.wire import (
        FLAG_WANT_REPLY,
        PROTO_VERSION,
        FrameType,
        decode_header,
        encode_frame,
        encode_record,
    )

    def recv_exact(c: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = c.recv(n - len(buf))
            assert chunk, "server closed the connection"
            buf += chunk
        return buf

    host, port = server.endpoint.split(":")
    hello = {"proto": PROTO_VERSION, "token": server.token, "ops_hash": OPS_HASH, "pid": 1, "host": "t"}
    with socket.create_connection((host, int(port)), timeout=20) as c:
        c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(hello)))
        h = decode_header(recv_exact(c, 16), 1 << 16)
        assert h.type == FrameType.HELLO_OK
        recv_exact(c, h.length)
        op_host, op_ping = OPS["cuLaunchHostFunc"][0], OPS["FG_PING"][0]
        op_retain, op_set_ctx = OPS["cuDevicePrimaryCtxRetain"][0], OPS["FG_SET_CTX"][0]
        c.sendall(encode_frame(FrameType.BATCH, encode_record(op_retain, struct.pack("<Bi", 1, 0)),
                               FLAG_WANT_REPLY, seq=1))
        h = decode_header(recv_exact(c, 16))
        reply = recv_exact(c, h.length)
        assert struct.unpack("<I", reply[:4])[0] == 0
        (ctx,) = struct.unpack("<Q", reply[24:32])
        payload = (encode_record(op_set_ctx, struct.pack("<Q", ctx)) + encode_record(op_host, struct.pack("<QQ", 0, 7))
                   + encode_record(op_ping, b""))
        c.sendall(encode_frame(FrameType.BATCH, payload, FLAG_WANT_REPLY, seq=2))
        h = decode_header(recv_exact(c, 16))
        assert h.type == FrameType.REPLY
        result, deferred, deferred_op = struct.unpack("<III", recv_exact(c, h.length)[:12])
    assert (result, deferred, deferred_op) == (0, 304, op_host)


ORDERED_COPIES = PRELUDE + r'''
import threading, time
ctx0()
s, s2 = ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
ok(cu.cuStreamCreate(ctypes.byref(s2), 1), "stream 2")
N, STEPS = 4096, 4                     # words per block
U32 = ctypes.c_uint32 * N
def dalloc(n):
    r, p = alloc(n)
    ok(r, "alloc")
    return p
def pinned(n, how):
    p = ctypes.c_void_p()
    if how == "alloc_host":
        ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(n)), "cuMemAllocHost")
    elif how == "host_alloc":
        ok(cu.cuMemHostAlloc(ctypes.byref(p), ctypes.c_size_t(n), 0), "cuMemHostAlloc")
    else:                              # caller memory, registered
        global keep
        keep = ctypes.create_string_buffer(n)
        p = ctypes.c_void_p(ctypes.addressof(keep))
        ok(cu.cuMemHostRegister_v2(p, ctypes.c_size_t(n), 0), "cuMemHostRegister")
    ctypes.memset(p, 0, n)
    return p.value
d_src, d_side = dalloc(4 * N), dalloc(4 * N)
d_dst = [dalloc(4 * N) for _ in range(STEPS)]
seen = pinned(4 * N * STEPS, "alloc_host")          # each step's D2H lands here, in two copies
feed = pinned(4 * N * STEPS, "host_alloc")          # each callback writes here; the next H2D reads it
side = pinned(4 * N, "register")                    # a D2H on another stream, not ordered with the callbacks
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
STREAMCB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
saw, bad = {}, []
def body(step):
    time.sleep(0.2)                    # a slow callback: the copy after it must still wait for it
    v = U32.from_address(seen + 4 * N * step)
    saw[step] = (v[0], v[N // 2 - 1], v[N // 2], v[N - 1])
    f = U32.from_address(feed + 4 * N * step)
    for i in range(N):
        f[i] = 1000 * (step + 1) + i
    for i in range(N):                 # the callback owns the D2H'd block now: scribble on it
        v[i] = 0xdead0000 + step
def hostfn(data):
    body(data or 0)
def streamcb(stream, status, data):
    if status != 0:
        bad.append(("status", status))
    body(data or 0)
keep_fns = (HOSTFN(hostfn), STREAMCB(streamcb))
pageable = ctypes.create_string_buffer(4 * N)
d_page = dalloc(4 * N)
for step in range(STEPS):
    src = U32(*[(step + 1) * 7 + i for i in range(N)])
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(d_src), src, ctypes.c_size_t(4 * N)), "HtoD")
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(side), ctypes.c_uint64(d_src), ctypes.c_size_t(4 * N), s2), "side")
    dst = seen + 4 * N * step          # two copies (two staged entries) before the callback
    half = 4 * N // 2
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(dst), ctypes.c_uint64(d_src), ctypes.c_size_t(half), s), "DtoH a")
    ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(dst + half), ctypes.c_uint64(d_src + half), ctypes.c_size_t(half), s),
       "DtoH b")
    if step % 2 == 0:
        ok(cu.cuLaunchHostFunc(s, keep_fns[0], ctypes.c_void_p(step)), "hostfunc")
    else:
        ok(cu.cuStreamAddCallback(s, keep_fns[1], ctypes.c_void_p(step), 0), "callback")
    ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(d_dst[step]), ctypes.c_void_p(feed + 4 * N * step),
                               ctypes.c_size_t(4 * N), s), "HtoDAsync pinned")
    # pageable source: the bytes are taken at the call, as the driver stages them
    ctypes.memset(pageable, step + 1, 4 * N)
    ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(d_page), pageable, ctypes.c_size_t(4 * N), s), "HtoDAsync pageable")
    ctypes.memset(pageable, 0xff, 4 * N)
ok(cu.cuStreamSynchronize(s), "sync")
ok(cu.cuStreamSynchronize(s2), "sync 2")
for step in range(STEPS):
    want = ((step + 1) * 7, (step + 1) * 7 + N // 2 - 1, (step + 1) * 7 + N // 2, (step + 1) * 7 + N - 1)
    if saw.get(step) != want:
        bad.append(("callback saw", step, saw.get(step), want))
    out = U32()
    ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(d_dst[step]), ctypes.c_size_t(4 * N)), "DtoH check")
    if out[0] != 1000 * (step + 1) or out[N - 1] != 1000 * (step + 1) + N - 1:
        bad.append(("H2D read before the callback wrote", step, out[0], out[N - 1]))
    v = U32.from_address(seen + 4 * N * step)
    if any(v[i] != 0xdead0000 + step for i in (0, N // 2, N - 1)):
        bad.append(("D2H data delivered again after the callback", step, hex(v[0]), hex(v[N - 1])))
pg = (ctypes.c_uint8 * 8)()
ok(cu.cuMemcpyDtoH_v2(pg, ctypes.c_uint64(d_page), ctypes.c_size_t(8)), "DtoH page")
if list(pg) != [STEPS] * 8:
    bad.append(("pageable source not taken at the call", list(pg)))
sv = U32.from_address(side)
if sv[0] != STEPS * 7 or sv[N - 1] != STEPS * 7 + N - 1:
    bad.append(("side copy", sv[0], sv[N - 1]))
print("BAD", bad)
'''


def test_async_copies_around_host_functions_follow_stream_order(server: NodeServer) -> None:
    """What tests/acceptance/cuda/host_callback.cu checks on a GPU, on the simulated device: a host function sees,
    in pinned memory, the data of the async device→host copies before it on its stream (two copies here, so two
    staged entries ride with one RUN); an async host→device copy from pinned memory (cuMemAllocHost,
    cuMemHostAlloc) submitted after it reads what the function wrote, even though the function is slow; the
    sync reply afterwards does not write those copies' data again over what the function left there; a pageable
    source is still taken at the call; a copy on another stream arrives by the next sync. Both cuLaunchHostFunc
    and cuStreamAddCallback."""
    r = run_client(ORDERED_COPIES, server.client_env(), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()
    assert "BAD []" in r.stdout, r.stdout + r.stderr


BROKEN_WHILE_WAITING = PRELUDE + r'''
import time
ctx0()
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
noop = HOSTFN(lambda _: None)
ok(cu.cuLaunchHostFunc(s, noop, None), "hostfunc 0")   # opens the callback connection
ok(cu.cuStreamSynchronize(s), "sync")
r, d = alloc(4096)
ok(r, "alloc")
p = ctypes.c_void_p()
ok(cu.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(4096)), "cuMemAllocHost")
print("READY", flush=True)
sys.stdin.readline()                                   # the worker is stopped now
ok(cu.cuLaunchHostFunc(s, noop, None), "hostfunc 1")   # never runs
print("WAITING", flush=True)
t = time.monotonic()
r = cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(d), p, ctypes.c_size_t(4096), s)
print("H2D", r, round(time.monotonic() - t, 1), flush=True)
print("SYNC", cu.cuStreamSynchronize(s), flush=True)
'''


def test_a_copy_waiting_for_a_host_function_fails_when_the_session_dies(server: NodeServer) -> None:
    """An async copy from pinned memory waits for a host function submitted before it; if the session's worker
    dies first (stopped before it could reach the function, then killed), the copy returns an error instead of
    waiting for ever: the callback connection's end wakes it (CUDA_ERROR_OPERATING_SYSTEM, as for a host
    function the server could not run)."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-P", "-c", BROKEN_WHILE_WAITING], env=server.client_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "READY", proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        workers: list[str] = []
        while not workers and time.monotonic() < deadline:
            workers = re.findall(r"-> worker (\d+)", server.log_text())
            time.sleep(0.05)
        assert len(workers) == 1, server.log_text()
        worker = int(workers[0])
        os.kill(worker, signal.SIGSTOP)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "WAITING"
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert re.search(r"^H2D 304 ", out, re.M), out + err
    assert "SYNC 0" not in out, out + err
