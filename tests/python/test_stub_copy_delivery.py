"""The stub's side of async device→host delivery (protocol/SPEC.md, "Replies" and "Callbacks"), against a fake node
server written here, so it can send what a real one never would: each copy is written once — by a reply, or by a
host function's RUN message before the function runs — a copy named again is dropped (a host function may have
changed that memory since), a failed copy (length 0) writes nothing, and an id or a length the stub did not ask for
ends the session (reply) or the callback connection (RUN; what that message had written is taken back for the
next reply). The real stub (libcuda.so.1) runs in a client process, as in the end-to-end tests."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from cuda_ctypes import PRELUDE

from fargpu import paths
from fargpu.protocol.generated.ops import OPS
from fargpu.protocol.wire import FLAG_WANT_REPLY, PROTO_VERSION, FrameType, decode_header, encode_frame, iter_records

OP_D2H = OPS["cuMemcpyDtoHAsync_v2"][0]
OP_HOSTFN = OPS["cuLaunchHostFunc"][0]
RUN = struct.Struct("<IIQiI")  # magic "FGCB", kind, cookie, status, copies that follow
CB_MAGIC = 0x42434746
Copy = tuple[int, int, bytes]  # id, length, bytes


def recv_exact(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def copies(items: list[Copy]) -> bytes:
    return b"".join(struct.pack("<QQ", i, n) + data for i, n, data in items)


class FakeNode:
    """One session at a time. `replies[k]` are the copies the k-th reply carries; `runs[k]` those the RUN message
    of the k-th host function carries (the RUN's outcome, "DONE" or "EOF", goes to `events`)."""

    def __init__(self, replies: list[list[Copy]], runs: list[list[Copy]]) -> None:
        self.replies, self.runs = replies, runs
        self.events: list[str] = []
        self.errors: list[str] = []
        self.cb: socket.socket | None = None
        self.cb_ready = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        try:
            h = decode_header(recv_exact(conn, 16), 1 << 16)
            hello: dict[str, Any] = msgpack.unpackb(recv_exact(conn, h.length))
            if "attach_key" in hello:  # the callback connection
                conn.sendall(encode_frame(FrameType.HELLO_OK, msgpack.packb({"proto": PROTO_VERSION})))
                self.cb = conn
                self.cb_ready.set()
                return
            ok = {"proto": PROTO_VERSION, "session": "fake", "backend": "sim", "max_frame": 80 << 20,
                  "attach_key": "k" * 32}
            conn.sendall(encode_frame(FrameType.HELLO_OK, msgpack.packb(ok)))
            self.serve(conn)
        except (EOFError, ConnectionError):  # the client went away (or dropped the session: that is tested)
            pass
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def run_host_function(self, cookie: int) -> None:
        items = self.runs.pop(0)
        assert self.cb_ready.wait(10) and self.cb is not None
        self.cb.sendall(RUN.pack(CB_MAGIC, 1, cookie, 0, len(items)) + copies(items))
        try:
            magic, kind, back, _, _ = RUN.unpack(recv_exact(self.cb, RUN.size))
            self.events.append("DONE" if (magic, kind, back) == (CB_MAGIC, 2, cookie) else "BAD DONE")
        except (EOFError, ConnectionError):
            self.events.append("EOF")

    def serve(self, conn: socket.socket) -> None:
        while True:
            h = decode_header(recv_exact(conn, 16))
            payload = recv_exact(conn, h.length)
            for rec in iter_records(payload):
                if rec.op == OP_HOSTFN:
                    self.run_host_function(struct.unpack_from("<QQ", rec.args)[1])
            if h.flags & FLAG_WANT_REPLY:
                items = self.replies.pop(0)
                body = struct.pack("<IIIIQ", 0, 0, 0, len(items), 0) + copies(items)
                conn.sendall(encode_frame(FrameType.REPLY, body, seq=h.seq))


@pytest.fixture
def fake() -> Iterator[Callable[[list[list[Copy]], list[list[Copy]]], FakeNode]]:
    made: list[FakeNode] = []

    def make(replies: list[list[Copy]], runs: list[list[Copy]]) -> FakeNode:
        made.append(FakeNode(replies, runs))
        return made[-1]

    yield make
    for f in made:
        f.listener.close()


def run(node: FakeNode, body: str) -> str:
    env = dict(os.environ, FARGPU_SERVER=node.endpoint, FARGPU_TOKEN="t")
    env.pop("LD_PRELOAD", None)
    env["LD_LIBRARY_PATH"] = f"{paths.stub_dir()}:{env.get('LD_LIBRARY_PATH', '')}"
    code = PRELUDE + r'''
ok(cu.cuInit(0), "cuInit")
HOSTFN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def d2h(buf, src):
    ok(cu.cuMemcpyDtoHAsync_v2(buf, ctypes.c_uint64(src), ctypes.c_size_t(8), None), "d2h")
def sync():
    return cu.cuCtxSynchronize()
a, b, c, e = (ctypes.create_string_buffer(8) for _ in range(4))
def v(buf):
    return buf.raw.rstrip(b"\0")
''' + body
    r = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, timeout=60,
                       cwd="/")
    assert not node.errors, node.errors
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_each_copy_is_written_once_by_a_reply_or_a_run_message(fake: Callable[..., FakeNode]) -> None:
    node = fake(replies=[[(0, 8, b"AAAAAAAA")],
                         [(0, 8, b"again!!!"), (1, 8, b"BBBBBBBB")],  # 0 again: dropped
                         [(2, 8, b"late!!!!")],  # went with the RUN message: dropped
                         [(3, 0, b"")]],  # failed: nothing written
                runs=[[(2, 8, b"CCCCCCCC")]])
    out = run(node, r'''
d2h(a, 0x1000); d2h(b, 0x2000)
print("R1", sync(), v(a), v(b))
print("R2", sync(), v(a), v(b))
seen = []
def fn(_):
    seen.append(c.raw)
    ctypes.memmove(c, b"written!", 8)
f = HOSTFN(fn)
d2h(c, 0x3000)
ok(cu.cuLaunchHostFunc(None, f, None), "hostfunc")
print("R3", sync(), seen, v(c))
d2h(e, 0x4000)
print("R4", sync(), v(e))
''')
    assert "R1 0 b'AAAAAAAA' b''" in out, out
    assert "R2 0 b'AAAAAAAA' b'BBBBBBBB'" in out, out
    assert "R3 0 [b'CCCCCCCC'] b'written!'" in out, out
    assert "R4 0 b''" in out, out
    assert node.events == ["DONE"]


@pytest.mark.parametrize("bad", [[(5, 8, b"xxxxxxxx")], [(0, 4, b"xxxx")]], ids=["unknown id", "wrong length"])
def test_a_reply_with_a_copy_the_stub_did_not_ask_for_ends_the_session(fake: Callable[..., FakeNode],
                                                                        bad: list[Copy]) -> None:
    node = fake(replies=[bad], runs=[])
    out = run(node, r'''
d2h(a, 0x1000)
print("R1", sync(), v(a))
print("R2", sync())
''')
    assert "R1 46 b''" in out and "R2 46" in out, out


def test_a_run_message_with_a_copy_the_stub_did_not_ask_for_is_refused(fake: Callable[..., FakeNode]) -> None:
    """The callback thread checks every copy before the function runs: on a bad one it closes the callback
    connection without running the function, and the copy the message had already written is pending again, so
    the next reply writes it."""
    node = fake(replies=[[(0, 8, b"AAAAAAAA")]], runs=[[(0, 8, b"RRRRRRRR"), (9, 8, b"xxxxxxxx")]])
    out = run(node, r'''
seen = []
f = HOSTFN(lambda _: seen.append(1))
d2h(a, 0x1000)
ok(cu.cuLaunchHostFunc(None, f, None), "hostfunc")
print("R1", sync(), v(a), seen)
''')
    assert "R1 0 b'AAAAAAAA' []" in out, out
    assert node.events == ["EOF"]
