"""The doorbell (issue 13): over shared memory, small synchronous calls go through the region's mailboxes while the
worker spins on them (client_stub/doorbell.c, server/replay/doorbell.c, protocol/SPEC.md "Doorbell"). End to end
with the real stub, node agent, worker and simulated device: the calls give the same answers as over the socket,
in the same order with async work sent over the socket between them, deferred errors and host functions included;
both of its fallbacks run (a worker that went to sleep, a client that stopped spinning); a peer that dies never
hangs the other side; and a hand-written client that posts garbage ends only its own session. (The simulated device
is a test double: the latency figures come from bench/small_calls.sh, not from here.)"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client, start_server, stop_server
from test_host_callbacks import CLIENT as HOST_FUNCTIONS

from fargpu.protocol.generated.ops import OPS, OPS_HASH
from fargpu.protocol.wire import FLAG_WANT_REPLY, PROTO_VERSION, FrameType, decode_header, encode_frame, encode_record

# fg_shm.h: the doorbell's words and mailboxes
DB_WANTED, DB_WORKER, DB_CLIENT = 24, 64, 128
REQ_OFF, REP_OFF, MBOX = 4096, 4096 + (256 << 10), 256 << 10
OFF, IDLE, POSTED = 0, 1, 2
WAITING, READY = 1, 3


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    sock = Path("/tmp") / f"fargpu-doorbell-{os.getpid()}.sock"
    s = start_server(tmp_path_factory.mktemp("doorbell"), "--unix", str(sock))
    s.unix = str(sock)  # type: ignore[attr-defined]
    yield s
    stop_server(s)


def shm_env(node: NodeServer, **extra: str) -> dict[str, str]:
    return node.client_env(FARGPU_SERVER=node.unix, FARGPU_SHM_MB="16", FARGPU_STATS="1",  # type: ignore[attr-defined]
                           **extra)


def doorbell_counts(stderr: str) -> tuple[int, int]:
    m = re.search(r"doorbell: (\d+) synchronous batches through shared memory, (\d+) over the socket", stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# Async memsets (sent by the stub's sender thread over the socket after 1 µs, or with the next sync batch) each
# followed by a synchronous read-back of a few bytes: every read must see its own memset, never an older one. Now
# and then the client pauses long enough for the worker to stop spinning (the post falls back to the socket).
# Then a deferred error: an async memset of memory that does not exist, reported by the next synchronising call.
ORDER = PRELUDE + r'''
import time
ctx0()
n = 1 << 16
r, dev = alloc(n); ok(r, "alloc")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
out = ctypes.create_string_buffer(64)
wrong = 0
for i in range(400):
    v = (i * 7 + 3) % 256
    ok(cu.cuMemsetD8Async(ctypes.c_uint64(dev), ctypes.c_ubyte(v), ctypes.c_size_t(n), s), "memset")
    if i % 3 == 0: time.sleep(0.00005)      # the sender thread ships the memset on its own
    if i % 50 == 0: time.sleep(0.002)       # the worker stops spinning and sleeps on the socket
    ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(dev + (i % 64) * 1000), ctypes.c_size_t(64)), "dtoh")
    wrong += out.raw != bytes([v]) * 64
print("WRONG", wrong)
ok(cu.cuMemsetD8Async(ctypes.c_uint64(0x10), ctypes.c_ubyte(1), ctypes.c_size_t(n), s), "bad memset (queued)")
print("DEFERRED", cu.cuStreamSynchronize(s))
print("AFTER", cu.cuStreamSynchronize(s))
'''


@pytest.mark.parametrize("mode", ["doorbell", "client-sleeps", "off"])
def test_calls_through_the_doorbell_keep_order_and_errors(node: NodeServer, mode: str) -> None:
    """The same program, with the doorbell (the default), with a client that stops spinning at once (so the worker
    sends each reply over the socket), and with the doorbell off: the same output, every read in order."""
    extra = {"doorbell": {}, "client-sleeps": {"FARGPU_DOORBELL_SPIN_US": "1"},
             "off": {"FARGPU_SHM_DOORBELL": "0"}}[mode]
    r = run_client(ORDER, shm_env(node, FARGPU_SEND_AFTER_US="1", **extra))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.split("\n")
    assert "WRONG 0" in lines, r.stdout
    deferred = [ln for ln in lines if ln.startswith("DEFERRED")]
    assert deferred and deferred[0] != "DEFERRED 0" and "AFTER 0" in lines, r.stdout
    posts, fallbacks = doorbell_counts(r.stderr)
    if mode == "off":
        assert (posts, fallbacks) == (0, 0), r.stderr
    else:
        assert posts > 20 and fallbacks > 0, r.stderr  # both paths ran
    # the reference: the same program over the unix socket alone
    ref = run_client(ORDER, node.client_env(FARGPU_SERVER=node.unix, FARGPU_SHM_MB="0",  # type: ignore[attr-defined]
                                            FARGPU_SEND_AFTER_US="1"))
    assert ref.stdout == r.stdout, ref.stdout + ref.stderr


def test_host_functions_keep_their_order_through_the_doorbell(node: NodeServer) -> None:
    """The program makes only three synchronous calls, and a loaded machine (CI: 2 cores) can deschedule the worker
    past its spin window for all three: every run must keep the order, and it runs again (a few times at most)
    until one of them went through the doorbell."""
    stderr = ""
    for _ in range(6):
        r = run_client(HOST_FUNCTIONS, shm_env(node))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ORDER [('first', True, True), ('second',), ('third', 0, True, 1234)]" in r.stdout, r.stdout + r.stderr
        stderr += r.stderr
        if doorbell_counts(r.stderr)[0] > 0:
            return
    pytest.fail("no run sent a synchronous call through the doorbell:\n" + stderr)


LOOP = PRELUDE + r'''
ctx0()
r, dev = alloc(4096); ok(r, "alloc")
out = ctypes.create_string_buffer(64)
print("GO", flush=True)
while True:
    r = cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(dev), ctypes.c_size_t(64))
    if r != 0:
        print("ERR", r, flush=True); break
'''


def _start_loop(node: NodeServer, **extra: str) -> tuple[subprocess.Popen[str], int]:
    before = node.log_text()
    proc = subprocess.Popen([sys.executable, "-P", "-c", LOOP], env=shm_env(node, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
    time.sleep(0.3)
    pids = re.findall(r"-> worker (\d+)", node.log_text()[len(before):])
    assert pids, node.log_text()[len(before):]
    return proc, int(pids[-1])


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_dead_worker_does_not_hang_its_client(node: NodeServer) -> None:
    """The worker is killed while the client calls through the doorbell as fast as it can: the client's call stops
    spinning, reads the socket, finds it closed and fails (no resume: nothing was parked)."""
    proc, pid = _start_loop(node, FARGPU_RESUME_TIMEOUT_S="2")
    os.kill(pid, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the client hung after its worker died") from None
    assert re.search(r"^ERR \d+", out, re.M), out + err


def test_a_dead_client_does_not_hang_its_worker(node: NodeServer) -> None:
    """The client is killed mid-call: its worker, spinning on the mailbox or asleep on the socket, sees the hang-up,
    releases the session and exits; the node serves the next client."""
    proc, pid = _start_loop(node)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _gone(pid, 20), "the worker outlived its client"
    maps = Path(f"/proc/{node.proc.pid}/maps").read_text()
    assert "fargpu-shm" not in maps  # the node agent never maps a client's region
    r = run_client(ORDER, shm_env(node))
    assert "WRONG 0" in r.stdout, r.stdout + r.stderr


def _raw_session(node: NodeServer, size: int) -> tuple[socket.socket, mmap.mmap]:
    """A hand-written co-located client that asks for the doorbell: its region (mapped here too) and socket."""
    import fcntl

    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(20)
    c.connect(node.unix)  # type: ignore[attr-defined]
    hello = {"proto": PROTO_VERSION, "token": node.token, "ops_hash": OPS_HASH, "pid": 1, "host": "t", "shm": size}
    c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(hello)))
    h = decode_header(c.recv(16, socket.MSG_WAITALL), 1 << 16)
    assert h.type == FrameType.HELLO_OK, h
    c.recv(h.length, socket.MSG_WAITALL)
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    region = mmap.mmap(fd, size)
    struct.pack_into("<I", region, DB_WANTED, 1)
    socket.send_fds(c, [encode_frame(FrameType.SHM, struct.pack("<Q", size))], [fd])
    os.close(fd)
    h = decode_header(c.recv(16, socket.MSG_WAITALL), 16)
    assert h.type == FrameType.SHM and c.recv(4, socket.MSG_WAITALL) == b"\0\0\0\0"
    return c, region


def _word(region: mmap.mmap, off: int) -> int:
    return int(struct.unpack_from("<I", region, off)[0])


def _ping(c: socket.socket, seq: int) -> None:
    c.sendall(encode_frame(FrameType.BATCH, encode_record(OPS["FG_PING"][0], b""), FLAG_WANT_REPLY, seq=seq))


def _post(c: socket.socket, region: mmap.mmap, frame: bytes) -> None:
    """Write frame into the request mailbox and post it while the worker spins (a PING over the socket wakes a
    worker that is asleep). The test's stores are not one compare-and-swap: a worker that went to sleep just before
    the post finds it when a PING wakes it (the tests send one after a while)."""
    for seq in range(1000, 1100):
        if _word(region, DB_WORKER) == IDLE:
            region[REQ_OFF:REQ_OFF + len(frame)] = frame
            struct.pack_into("<I", region, DB_CLIENT, WAITING)
            struct.pack_into("<I", region, DB_WORKER, POSTED)
            return
        _ping(c, seq)
        h = decode_header(c.recv(16, socket.MSG_WAITALL))
        c.recv(h.length, socket.MSG_WAITALL)
    raise AssertionError("the worker never spun on its mailbox")


def test_a_hand_written_client_gets_its_reply_in_the_mailbox(node: NodeServer) -> None:
    c, region = _raw_session(node, 16 << 20)
    with c, region:
        _post(c, region, encode_frame(FrameType.BATCH, encode_record(OPS["FG_PING"][0], b""), FLAG_WANT_REPLY,
                                      seq=7))
        deadline, woke = time.monotonic() + 10, False
        while _word(region, DB_CLIENT) == WAITING and time.monotonic() < deadline:
            if not woke and time.monotonic() > deadline - 9.5:
                _ping(c, 2000)  # in case the worker fell asleep just before the post (its reply is not read)
                woke = True
        assert _word(region, DB_CLIENT) == READY
        h = decode_header(bytes(region[REP_OFF:REP_OFF + 16]))
        assert h.type == FrameType.REPLY and h.seq == 7 and h.length == 24
        assert bytes(region[REP_OFF + 16:REP_OFF + 40]) == bytes(24)  # success, no deferred error, no outputs
        assert _word(region, DB_WORKER) in (IDLE, OFF)


@pytest.mark.parametrize("garbage", ["bad-magic", "too-long", "no-reply-wanted"])
def test_garbage_in_the_mailbox_ends_only_that_session(node: NodeServer, garbage: str) -> None:
    """Whatever a client posts is copied out once and checked like a socket frame: a malformed request closes that
    session with the reason, and the node serves the next client."""
    ping = encode_record(OPS["FG_PING"][0], b"")
    frame = {"bad-magic": b"XXXX" + encode_frame(FrameType.BATCH, ping, FLAG_WANT_REPLY, seq=9)[4:],
             "too-long": encode_frame(FrameType.BATCH, ping, FLAG_WANT_REPLY, seq=9)[:8] + struct.pack("<I", MBOX)
             + struct.pack("<I", 9),
             "no-reply-wanted": encode_frame(FrameType.BATCH, ping, 0, seq=9)}[garbage]
    c, region = _raw_session(node, 16 << 20)
    with c, region:
        _post(c, region, frame)
        time.sleep(0.5)
        with contextlib.suppress(OSError):
            _ping(c, 2000)  # wakes a worker that fell asleep just before the post; it serves the mailbox next
        reason = ""
        while True:  # replies to the test's PINGs, if any, then CLOSE
            hb = c.recv(16, socket.MSG_WAITALL)
            assert len(hb) == 16, "the connection ended without a CLOSE"
            h = decode_header(hb, 1 << 20)
            body = c.recv(h.length, socket.MSG_WAITALL)
            if h.type == FrameType.CLOSE:
                reason = msgpack.unpackb(body)["reason"]
                break
        assert reason.startswith("protocol error"), reason
    r = run_client(ORDER, shm_env(node))
    assert "WRONG 0" in r.stdout, r.stdout + r.stderr
