"""Every socket read has a deadline (issue 15): a peer may stay silent between messages, but a message that
has begun must arrive whole within FARGPU_IO_TIMEOUT_S, and a HELLO within FARGPU_HELLO_TIMEOUT_S. A frame that
promises 80 MiB and delivers 8 MiB, a stalled handshake (of a session or of a callback connection) and a partial
DONE on a callback connection are each closed with a logged reason. Hand-written clients on real sockets against
a real node server on the simulated device."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from e2e_helpers import NodeServer, start_server, stop_server

from fargpu.protocol.generated.ops import OPS, OPS_HASH
from fargpu.protocol.wire import FLAG_WANT_REPLY, PROTO_VERSION, FrameType, decode_header, encode_frame, encode_record


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[NodeServer]:
    s = start_server(tmp_path, env_extra={"FARGPU_IO_TIMEOUT_S": "1", "FARGPU_HELLO_TIMEOUT_S": "1"})
    yield s
    stop_server(s)


def recv_exact(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        assert chunk, "the server closed the connection"
        buf += chunk
    return buf


def connect(s: NodeServer) -> socket.socket:
    host, port = s.endpoint.split(":")
    return socket.create_connection((host, int(port)), timeout=20)


def hello(c: socket.socket, s: NodeServer, **extra: str) -> dict[str, object]:
    body = {"proto": PROTO_VERSION, "token": s.token, "ops_hash": OPS_HASH, "pid": 1, "host": "t", **extra}
    c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(body)))
    h = decode_header(recv_exact(c, 16), 1 << 16)
    assert h.type == FrameType.HELLO_OK
    doc = msgpack.unpackb(recv_exact(c, h.length))
    assert isinstance(doc, dict)
    return doc


def wait_log(s: NodeServer, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in s.log_text():
        assert time.monotonic() < deadline, s.log_text()
        time.sleep(0.05)


def test_a_frame_that_promises_80_mib_and_delivers_8_is_closed(quick: NodeServer) -> None:
    with connect(quick) as c:
        hello(c, quick)
        c.sendall(encode_frame(FrameType.BATCH, b"")[:0] + struct.pack("<IHHII", 0x31504746, FrameType.BATCH, 0,
                                                                        80 << 20, 1))
        c.sendall(b"\0" * (8 << 20))
        t0 = time.monotonic()
        h = decode_header(recv_exact(c, 16), 1 << 20)
        assert h.type == FrameType.CLOSE
        reason = msgpack.unpackb(recv_exact(c, h.length))["reason"]
        assert time.monotonic() - t0 < 8
        assert f"sent {8 << 20} of a {80 << 20}-byte frame, then nothing for 1 s" in reason
        assert c.recv(1) == b""
    wait_log(quick, f"sent {8 << 20} of a {80 << 20}-byte frame")


def test_a_partial_frame_header_is_closed(quick: NodeServer) -> None:
    with connect(quick) as c:
        hello(c, quick)
        c.sendall(b"FGP1\x04\x00")  # 6 of 16 header bytes
        h = decode_header(recv_exact(c, 16), 1 << 20)
        assert h.type == FrameType.CLOSE
        assert "6 of a frame header's 16 bytes" in msgpack.unpackb(recv_exact(c, h.length))["reason"]


def test_an_idle_session_between_frames_is_not_closed(quick: NodeServer) -> None:
    """The deadline covers a message that has begun, not the quiet between messages."""
    with connect(quick) as c:
        hello(c, quick)
        time.sleep(2.5)
        c.sendall(encode_frame(FrameType.BATCH, encode_record(OPS["FG_PING"][0], b""), FLAG_WANT_REPLY, seq=1))
        h = decode_header(recv_exact(c, 16))
        assert h.type == FrameType.REPLY
        assert struct.unpack("<I", recv_exact(c, h.length)[:4])[0] == 0


@pytest.mark.parametrize("sent", [b"", b"FGP1\x01\x00"])
def test_a_stalled_handshake_is_closed(quick: NodeServer, sent: bytes) -> None:
    with connect(quick) as c:
        c.sendall(sent)
        t0 = time.monotonic()
        h = decode_header(recv_exact(c, 16), 1 << 16)
        assert h.type == FrameType.HELLO_ERR
        assert "no complete HELLO within 1 s" in msgpack.unpackb(recv_exact(c, h.length))["reason"]
        assert time.monotonic() - t0 < 5
    wait_log(quick, "stalled handshake")


def test_callback_connection_deadlines(quick: NodeServer) -> None:
    """A callback connection that never says HELLO is closed like any stalled handshake; one that sends part of
    a DONE and stalls is closed by the worker (logged), and the session hears CUDA_ERROR_OPERATING_SYSTEM."""
    with connect(quick) as idle:
        h = decode_header(recv_exact(idle, 16), 1 << 16)
        assert h.type == FrameType.HELLO_ERR
    with connect(quick) as c, connect(quick) as cb:
        ok = hello(c, quick)
        hello(cb, quick, attach_session=str(ok["session"]), attach_key=str(ok["attach_key"]))
        op_retain, op_set_ctx = OPS["cuDevicePrimaryCtxRetain"][0], OPS["FG_SET_CTX"][0]
        c.sendall(encode_frame(FrameType.BATCH, encode_record(op_retain, struct.pack("<Bi", 1, 0)),
                               FLAG_WANT_REPLY, seq=1))
        h = decode_header(recv_exact(c, 16))
        (ctx,) = struct.unpack("<Q", recv_exact(c, h.length)[24:32])
        op_host = OPS["cuLaunchHostFunc"][0]
        c.sendall(encode_frame(FrameType.BATCH, encode_record(op_set_ctx, struct.pack("<Q", ctx))
                               + encode_record(op_host, struct.pack("<QQ", 0, 7)), 0, seq=2))
        magic, kind, cookie, _status, n = struct.unpack("<IIQiI", recv_exact(cb, 24))
        assert (magic, kind, cookie, n) == (0x42434746, 1, 7, 0)
        cb.sendall(struct.pack("<IIQiI", magic, 2, cookie, 0, 0)[:8])  # a third of DONE, then silence
        t0 = time.monotonic()
        assert cb.recv(1) == b""  # the worker closed it
        assert time.monotonic() - t0 < 8
        wait_log(quick, "sent part of a DONE message, then nothing for 1 s")
        c.sendall(encode_frame(FrameType.BATCH, encode_record(OPS["FG_PING"][0], b""), FLAG_WANT_REPLY, seq=3))
        h = decode_header(recv_exact(c, 16))
        result, deferred, deferred_op = struct.unpack("<III", recv_exact(c, h.length)[:12])
    assert (result, deferred, deferred_op) == (0, 304, op_host)


def test_a_client_that_stops_reading_a_bulk_copy_is_closed(quick: NodeServer) -> None:
    """Writes have a deadline too: a client paused (SIGSTOP) while 256 MiB come back to it cannot hold its worker;
    the session ends after the I/O timeout with the reason logged."""
    import re
    import signal
    import subprocess
    import sys

    from cuda_ctypes import PRELUDE

    code = PRELUDE + r'''
ctx0()
n = 256 << 20
r, dev = alloc(n); ok(r, "alloc")
buf = ctypes.create_string_buffer(n)
print("GO", flush=True)
while True:
    ok(cu.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(dev), ctypes.c_size_t(n)), "dtoh")
'''
    before = len(quick.log_text())
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], env=quick.client_env(FARGPU_STREAMS="1"),
                            stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
        # A pause that lands between two copies (the worker idle, waiting for the next request, which has no
        # deadline) stalls nothing: let the client go on and pause it again, a few times at most.
        for _attempt in range(5):
            time.sleep(0.3)
            proc.send_signal(signal.SIGSTOP)
            give_up = time.monotonic() + 8
            while "a bulk copy stalled on connection 0" not in quick.log_text()[before:] and time.monotonic() < give_up:
                time.sleep(0.05)
            if "a bulk copy stalled on connection 0" in quick.log_text()[before:]:
                break
            proc.send_signal(signal.SIGCONT)
        wait_log(quick, "a bulk copy stalled on connection 0", timeout=1)
        pid = int(re.findall(r"-> worker (\d+)", quick.log_text()[before:])[-1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the worker stayed with a paused client")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
