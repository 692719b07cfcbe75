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
