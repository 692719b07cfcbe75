"""Every transport moves every kind of copy right (issue 13), on the simulated device: TCP with one stream, TCP
striped over three, a unix socket, and shared memory (a sealed memfd the worker maps and registers). Property
tests compare each copy kind (sync/async, pageable/pinned, both directions) at sizes straddling the stub's bulk
threshold, the worker's 2 MiB ring pieces and 16-slot ring, and the 4 MiB shared-memory staging slots, against the
bytes written, from seeded random data; concurrent streams on several threads; mapped host memory that device
work writes in place; a client killed mid-copy; out-of-range offsets from a hand-written client; and the nvcc
acceptance probe over every transport. (The simulated device is a test double; no GPU claim rests on these.)"""

from __future__ import annotations

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
from e2e_helpers import NodeServer, run_client, start_server, stop_server, wait_process_gone

from fargpu.protocol.generated.ops import OPS, OPS_HASH
from fargpu.protocol.wire import FLAG_WANT_REPLY, PROTO_VERSION, FrameType, decode_header, encode_frame, encode_record

TRANSPORTS = {
    "tcp1": {"FARGPU_STREAMS": "1"},
    "tcp3": {"FARGPU_STREAMS": "3"},
    "unix": {"FARGPU_SHM_MB": "0"},
    "shm": {"FARGPU_SHM_MB": "112"},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    sock = Path("/tmp") / f"fargpu-transports-{os.getpid()}.sock"
    s = start_server(tmp_path_factory.mktemp("transports"), "--unix", str(sock))
    s.unix = str(sock)  # type: ignore[attr-defined]
    yield s
    stop_server(s)


def env_for(node: NodeServer, transport: str, **extra: str) -> dict[str, str]:
    env = dict(TRANSPORTS[transport], FARGPU_STATS="1", **extra)
    if transport in ("unix", "shm"):
        env["FARGPU_SERVER"] = node.unix  # type: ignore[attr-defined]
    return node.client_env(**env)


def sent(stderr: str, op: str) -> int:
    m = re.search(rf"^\s+{op}\s+\w+\s+sent\s+(\d+)", stderr, re.M)
    return int(m.group(1)) if m else 0


COPIES = PRELUDE + r'''
import random, os
ctx0()
rng = random.Random(int(os.environ["SEED"]))
MiB = 1 << 20
sizes = [1, 64, 4095, 256 * 1024 - 1, 256 * 1024, 2 * MiB - 1, 2 * MiB + 1, 4 * MiB + 7, 33 * MiB + 5]
CAP = 40 * MiB
r, dev = alloc(CAP + 4096); ok(r, "alloc")
pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(CAP)), "allochost")
s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 0), "stream")
def put(kind, off, data):
    n = len(data)
    if kind.startswith("pinned"):
        ctypes.memmove(pin.value, data, n); src = ctypes.c_void_p(pin.value)
    else:
        src = ctypes.create_string_buffer(data, n)
    if kind.endswith("async"):
        ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(dev + off), src, ctypes.c_size_t(n), s), "htod async")
        if kind == "pageable_async": ctypes.memset(src, 0, n)  # taken at the call: reusing it changes nothing
        ok(cu.cuStreamSynchronize(s), "sync")
    else:
        ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev + off), src, ctypes.c_size_t(n)), "htod")
def get(kind, off, n):
    if kind.startswith("pinned"):
        ctypes.memset(pin.value, 0, n); dst = ctypes.c_void_p(pin.value); addr = pin.value
    else:
        dst = ctypes.create_string_buffer(n); addr = ctypes.addressof(dst)
    if kind.endswith("async"):
        ok(cu.cuMemcpyDtoHAsync_v2(dst, ctypes.c_uint64(dev + off), ctypes.c_size_t(n), s), "dtoh async")
        ok(cu.cuStreamSynchronize(s), "sync")
    else:
        ok(cu.cuMemcpyDtoH_v2(dst, ctypes.c_uint64(dev + off), ctypes.c_size_t(n)), "dtoh")
    return ctypes.string_at(addr, n)
kinds = ["pageable", "pinned", "pageable_async", "pinned_async"]
checks = 0
for n in sizes:
    for k_in in kinds:
        for k_out in (k_in, rng.choice(kinds)):
            off = rng.randrange(0, 4096)
            data = rng.randbytes(n)
            put(k_in, off, data)
            back = get(k_out, off, n)
            if back != data:
                bad = next(i for i in range(n) if back[i] != data[i])
                print(f"MISMATCH n={n} in={k_in} out={k_out} off={off} first bad byte {bad}"); sys.exit(1)
            checks += 1
# A failing copy keeps the session whole: the error comes back, the next copy works.
big = ctypes.create_string_buffer(3 * MiB)
r = cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev + CAP), big, ctypes.c_size_t(3 * MiB))
r2 = cu.cuMemcpyDtoH_v2(big, ctypes.c_uint64(dev + CAP), ctypes.c_size_t(3 * MiB))
print("ERR", r, r2)
put("pageable", 0, b"x" * (3 * MiB)); assert get("pageable", 0, 3 * MiB) == b"x" * (3 * MiB)
print("OK", checks)
'''


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_every_copy_kind_and_size_matches_the_reference(node: NodeServer, transport: str) -> None:
    res = run_client(COPIES, env_for(node, transport, SEED=str(13 + len(transport))), timeout=120)
    assert res.returncode == 0 and "OK 72" in res.stdout, res.stdout + res.stderr[-3000:]
    assert "ERR 1 1" in res.stdout, res.stdout  # CUDA_ERROR_INVALID_VALUE, both ways, over every path
    if transport == "shm":
        assert sent(res.stderr, "FG_SHM_HTOD") > 0 and sent(res.stderr, "FG_SHM_DTOH") > 0, res.stderr
    else:
        assert sent(res.stderr, "FG_SHM_HTOD") == 0, res.stderr
        assert sent(res.stderr, "FG_BULK_HTOD") > 0 and sent(res.stderr, "FG_BULK_DTOH") > 0, res.stderr


CONCURRENT = PRELUDE + r'''
import random, threading
ctx = ctx0()
MiB = 1 << 20
errors = []
def worker(t):
    ok(cu.cuCtxSetCurrent(ctx), "cur")
    rng = random.Random(t)
    s = ctypes.c_void_p(); ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
    r, dev = alloc(8 * MiB); ok(r, "alloc")
    pin = ctypes.c_void_p(); ok(cu.cuMemAllocHost_v2(ctypes.byref(pin), ctypes.c_size_t(8 * MiB)), "allochost")
    for i in range(6):
        n = rng.choice([100, 300 * 1024, 2 * MiB + 11, 5 * MiB + 3])
        data = rng.randbytes(n)
        src = ctypes.create_string_buffer(data, n)
        ok(cu.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(dev), src, ctypes.c_size_t(n), s), "htod")
        ok(cu.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(pin.value), ctypes.c_uint64(dev), ctypes.c_size_t(n), s), "dtoh")
        ok(cu.cuStreamSynchronize(s), "sync")
        if ctypes.string_at(pin.value, n) != data:
            errors.append((t, i, n))
        out = ctypes.create_string_buffer(n)
        ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(dev), ctypes.c_size_t(n)), "dtoh sync")
        if out.raw != data:
            errors.append((t, i, n, "sync"))
threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("ERRORS", errors)
'''


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_concurrent_streams_on_several_threads(node: NodeServer, transport: str) -> None:
    res = run_client(CONCURRENT, env_for(node, transport), timeout=120)
    assert res.returncode == 0 and "ERRORS []" in res.stdout, res.stdout + res.stderr[-3000:]


MAPPED = PRELUDE + r'''
ctx0()
p = ctypes.c_void_p()
ok(cu.cuMemHostAlloc(ctypes.byref(p), ctypes.c_size_t(1 << 20), 2), "hostalloc DEVICEMAP")  # CU_MEMHOSTALLOC_DEVICEMAP
d = ctypes.c_uint64()
r = cu.cuMemHostGetDevicePointer_v2(ctypes.byref(d), p, 0)
print("DEVPTR", r)
if r == 0:
    ctypes.memset(p, 0, 1 << 20)
    # Device work writes the mapped memory: the bytes appear in the application's own pages, no copy made.
    ok(cu.cuMemsetD8_v2(d, ctypes.c_ubyte(0x5a), ctypes.c_size_t(4096)), "memset mapped")
    ok(cu.cuCtxSynchronize(), "sync")
    print("SEEN", ctypes.string_at(p, 4096) == b"\x5a" * 4096, ctypes.string_at(p.value + 4096, 1) == b"\0")
'''


@pytest.mark.parametrize("transport", ["shm", "tcp1"])
def test_mapped_host_memory_is_zero_copy_over_shared_memory(node: NodeServer, transport: str) -> None:
    """Over shared memory the device address is the worker's mapping of the very pages the application holds (one
    FG_SHM_DEVPTR, no shadow allocation, nothing copied back); remotely a mirrored shadow (managed.c) gives the
    same answer by copying."""
    res = run_client(MAPPED, env_for(node, transport))
    assert "DEVPTR 0" in res.stdout and "SEEN True True" in res.stdout, res.stdout + res.stderr
    if transport == "shm":
        assert sent(res.stderr, "FG_SHM_DEVPTR") == 1 and sent(res.stderr, "cuMemAlloc_v2") == 0, res.stderr
    else:
        assert sent(res.stderr, "FG_SHM_DEVPTR") == 0, res.stderr


@pytest.mark.parametrize("transport", ["tcp3", "shm"])
def test_a_client_killed_mid_copy_leaks_nothing(node: NodeServer, transport: str) -> None:
    """Killed while 48 MiB copies run both ways: its worker (holding the staging ring, the registered region,
    the data connections and the device memory) exits, the node agent holds nothing of the region, and the node
    serves the next client."""
    code = PRELUDE + r'''
ctx0()
n = 48 << 20
r, dev = alloc(n); ok(r, "alloc")
buf = ctypes.create_string_buffer(n)
print("GO", flush=True)
while True:
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dev), buf, ctypes.c_size_t(n)), "htod")
    ok(cu.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(dev), ctypes.c_size_t(n)), "dtoh")
'''
    before = node.log_text()
    proc = subprocess.Popen([sys.executable, "-P", "-c", code], env=env_for(node, transport), stdout=subprocess.PIPE,
                            text=True, cwd="/")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
    time.sleep(0.4)
    new = node.log_text()[len(before):]
    pid = int(re.findall(r"-> worker (\d+)", new)[-1])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_process_gone(pid, "the worker outlived its client killed mid-copy")
    # Nor does the node agent keep the region: no descriptor or mapping of a client's memfd in it.
    held = []
    for link in Path(f"/proc/{node.proc.pid}/fd").iterdir():
        try:
            held.append(os.readlink(link))
        except OSError:
            pass
    held.append(Path(f"/proc/{node.proc.pid}/maps").read_text())
    assert not [h for h in held if "fargpu-shm" in h], held
    res = run_client(COPIES.replace("sizes = [", "sizes = [3 << 20, "), env_for(node, transport, SEED="5"))
    assert "OK 80" in res.stdout, res.stdout + res.stderr[-2000:]


def _raw_session(node: NodeServer, shm_bytes: int) -> tuple[socket.socket, int]:
    """A hand-written co-located client: HELLO with a shared-memory offer, the memfd over SCM_RIGHTS."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(20)
    c.connect(node.unix)  # type: ignore[attr-defined]
    hello = {"proto": PROTO_VERSION, "token": node.token, "ops_hash": OPS_HASH, "pid": 1, "host": "t",
             "shm": shm_bytes}
    c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(hello)))
    h = decode_header(c.recv(16, socket.MSG_WAITALL), 1 << 16)
    assert h.type == FrameType.HELLO_OK and msgpack.unpackb(c.recv(h.length, socket.MSG_WAITALL))["shm"]
    import fcntl

    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, shm_bytes)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    socket.send_fds(c, [encode_frame(FrameType.SHM, struct.pack("<Q", shm_bytes))], [fd])
    os.close(fd)
    h = decode_header(c.recv(16, socket.MSG_WAITALL), 16)
    assert h.type == FrameType.SHM
    (result,) = struct.unpack("<I", c.recv(4, socket.MSG_WAITALL))
    return c, result


def _call(c: socket.socket, payload: bytes, seq: int) -> tuple[int, int]:
    c.sendall(encode_frame(FrameType.BATCH, payload, FLAG_WANT_REPLY, seq=seq))
    h = decode_header(c.recv(16, socket.MSG_WAITALL))
    assert h.type == FrameType.REPLY, h
    result, deferred = struct.unpack("<II", c.recv(h.length, socket.MSG_WAITALL)[:8])
    return result, deferred


def test_shared_memory_offsets_are_bounds_checked(node: NodeServer) -> None:
    size = 16 << 20
    c, result = _raw_session(node, size)
    with c:
        assert result == 0
        retain, set_ctx, ping = OPS["cuDevicePrimaryCtxRetain"][0], OPS["FG_SET_CTX"][0], OPS["FG_PING"][0]
        c.sendall(encode_frame(FrameType.BATCH, encode_record(retain, struct.pack("<Bi", 1, 0)), FLAG_WANT_REPLY,
                               seq=1))
        h = decode_header(c.recv(16, socket.MSG_WAITALL))
        (ctx,) = struct.unpack("<Q", c.recv(h.length, socket.MSG_WAITALL)[24:32])
        htod, devptr = OPS["FG_SHM_HTOD"][0], OPS["FG_SHM_DEVPTR"][0]
        for i, (off, n) in enumerate([(0, 8), (size - 4, 8), (size, 1), (1 << 62, 1 << 62)]):
            rec = encode_record(htod, struct.pack("<QQQQIQ", 0x1000, 0, off, n, 1, 0))
            assert _call(c, encode_record(set_ctx, struct.pack("<Q", ctx)) + rec + encode_record(ping, b""),
                         2 + i) == (0, 1)  # CUDA_ERROR_INVALID_VALUE as the deferred error, never a crash
        assert _call(c, encode_record(devptr, struct.pack("<Q", size + 4096)), 9)[0] == 1
        # the doorbell's mailboxes (fg_shm.h: 4 KiB header, two 256 KiB mailboxes) are not the client's memory
        client_at = 4096 + 2 * (256 << 10)
        assert _call(c, encode_record(devptr, struct.pack("<Q", 4096)), 10)[0] == 1
        assert _call(c, encode_record(devptr, struct.pack("<Q", client_at - 8)), 11)[0] == 1
        assert _call(c, encode_record(devptr, struct.pack("<Q", client_at + 4096)), 12)[0] == 0


def test_a_region_that_is_not_sealed_is_refused(node: NodeServer) -> None:
    import fcntl

    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(20)
    with c:
        c.connect(node.unix)  # type: ignore[attr-defined]
        size = 16 << 20
        hello = {"proto": PROTO_VERSION, "token": node.token, "ops_hash": OPS_HASH, "pid": 1, "host": "t", "shm": size}
        c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(hello)))
        h = decode_header(c.recv(16, socket.MSG_WAITALL), 1 << 16)
        c.recv(h.length, socket.MSG_WAITALL)
        fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        del fcntl
        socket.send_fds(c, [encode_frame(FrameType.SHM, struct.pack("<Q", size))], [fd])
        os.close(fd)
        decode_header(c.recv(16, socket.MSG_WAITALL), 16)
        assert struct.unpack("<I", c.recv(4, socket.MSG_WAITALL)) == (1,)  # refused: the session goes on without
        assert _call(c, encode_record(OPS["FG_PING"][0], b""), 1) == (0, 0)
    assert "not sealed against shrinking" in node.log_text()


# ---------------------------------------------------------------------------------- acceptance programs


ACCEPTANCE = ("sim_probe", "vector_add", "api_managed")


@pytest.fixture(scope="module")
def acceptance_bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from acceptance_build import build_against_stub, load_runner

    acc = load_runner()
    built = build_against_stub(acc, ACCEPTANCE, tmp_path_factory.mktemp("transport-bin"))
    built["_check_proof"] = acc.check_proof  # type: ignore[assignment]
    return built


@pytest.mark.parametrize("program", ACCEPTANCE)
def test_acceptance_programs_print_the_same_over_every_transport(node: NodeServer, acceptance_bins: dict[str, Path],
                                                                 program: str, tmp_path: Path) -> None:
    """The nvcc-built acceptance programs (real cudart on the stub) print exactly the same over TCP with one and
    three streams, a unix socket and shared memory (cudaMallocHost / cudaHostAlloc memory then lives in the
    region), and each client proves it never loaded a real driver. sim_probe and api_managed pass all their checks;
    vector_add moves its 4 MiB buffers and then stops at its first kernel, which the simulated device does not run."""
    from fargpu import paths

    outputs = {}
    for transport in sorted(TRANSPORTS):
        proof = tmp_path / f"proof-{transport}.jsonl"
        env = env_for(node, transport, LD_PRELOAD=str(paths.stub_lib()), FARGPU_PROOF_FILE=str(proof))
        env.pop("FARGPU_STATS")
        res = subprocess.run([str(acceptance_bins[program])], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        outputs[transport] = res.stdout
        lines = res.stdout.splitlines()
        why = f"{transport}: rc {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        if program == "vector_add":
            fails = [ln for ln in lines if ln.startswith("FAIL ")]
            assert res.returncode == 1 and len(fails) == 1 and fails[0].endswith("operation not supported"), why
        else:
            assert res.returncode == 0 and lines and lines[-1] == "PASS", why
        check_proof = acceptance_bins["_check_proof"]
        ok, problems, _ = check_proof(proof, paths.stub_dir())  # type: ignore[operator]
        assert ok, problems
    assert len(set(outputs.values())) == 1, outputs


PER_THREAD = PRELUDE + r'''
import random
ctx0()
n = (9 << 20) + 5
r, dev = alloc(n); ok(r, "alloc")
data = random.Random(3).randbytes(n)
src = ctypes.create_string_buffer(data, n)
ok(cu.cuMemcpyHtoDAsync_v2_ptsz(ctypes.c_uint64(dev), src, ctypes.c_size_t(n), None), "htod ptsz")
out = ctypes.create_string_buffer(n)
ok(cu.cuMemcpyDtoHAsync_v2_ptsz(out, ctypes.c_uint64(dev), ctypes.c_size_t(n), None), "dtoh ptsz")
ok(cu.cuStreamSynchronize(ctypes.c_void_p(2)), "sync per-thread stream")  # CU_STREAM_PER_THREAD
print("SAME", out.raw == data)
'''


@pytest.mark.parametrize("transport", ["tcp3", "shm"])
def test_copies_on_the_per_thread_default_stream(node: NodeServer, transport: str) -> None:
    """The per-thread default stream belongs to the thread that names it: the worker issues such a striped copy's
    DMAs from its serving thread, not from the connections' threads. (The bytes are checked here; which thread's
    stream ordered them only a GPU can tell, since the simulated device runs stream work at once.)"""
    res = run_client(PER_THREAD, env_for(node, transport))
    assert "SAME True" in res.stdout, res.stdout + res.stderr[-2000:]
