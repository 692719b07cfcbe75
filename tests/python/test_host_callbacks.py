"""Host functions and stream callbacks run in the client, in stream order, without blocking the submitting thread:
the stub's callback connection carries RUN/DONE messages for the server's trampolines (client_stub/callbacks.c,
server/replay/callbacks.c). End to end with the real stub, node agent, worker and simulated device.

The simulated device runs stream work at enqueue, so a host function runs while its cuLaunchHostFunc record is
replayed; the test still shows what matters to the client: cuLaunchHostFunc returns before the function has run,
the function runs on another thread, later stream work waits for it, and callbacks run in submission order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client, start_server, stop_server

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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NodeServer]:
    s = start_server(tmp_path)
    yield s
    stop_server(s)


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
