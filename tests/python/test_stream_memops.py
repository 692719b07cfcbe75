"""Batched stream memory operations and context events through fargpu (client_stub/memops.c,
server/replay/memops.c, server/sim/sim_memop.c, sim_event.c), end to end with the real stub, node agent, worker and
simulated device: cuStreamBatchMemOp_v2 writes and waits on 32- and 64-bit values, with barriers and flushes, in
order; what the stub refuses at once (host memory, which the remote GPU cannot reach; too many operations) and what
comes back as an asynchronous error with the next synchronising call (an operation the driver refuses);
cuStreamWaitValue/WriteValue; cuStreamGetCtx_v2 (no green context); cuCtxRecordEvent and cuCtxWaitEvent; batch
memory-operation graph nodes (added, by the generic call too, queried, updated in the graph and in an executable,
launched in dependency order; host memory refused); the single forms' address checks in the stub and, for a
client that skips the stub, in the worker (server/replay/memops.c)."""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import struct
from pathlib import Path

import msgpack
from cuda_ctypes import PRELUDE
from e2e_helpers import NodeServer, run_client, start_server, stop_server

from fargpu.protocol.generated.ops import OPS, OPS_HASH
from fargpu.protocol.wire import FLAG_WANT_REPLY, PROTO_VERSION, FrameType, decode_header, encode_frame, encode_record

CLIENT = PRELUDE + r'''
import struct
ctx = ctx0()
class Op(ctypes.Structure):  # CUstreamBatchMemOpParams as wait/write: operation, address, value64, flags, alias
    _fields_ = [("operation", ctypes.c_uint), ("address", ctypes.c_uint64), ("value64", ctypes.c_uint64),
                ("flags", ctypes.c_uint), ("alias", ctypes.c_uint64), ("pad", ctypes.c_uint64)]
assert ctypes.sizeof(Op) == 48
WAIT32, WRITE32, FLUSH, WAIT64, WRITE64, BARRIER = 1, 2, 3, 4, 5, 6
GEQ, EQ, AND, NOR = 0, 1, 2, 3
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
r, p = alloc(64); ok(r, "alloc")
ok(cu.cuMemsetD8_v2(ctypes.c_uint64(p), 0, ctypes.c_size_t(64)), "memset")
def batch(*ops, flags=0, stream=None):
    arr = (Op * max(len(ops), 1))(*[Op(*o) for o in ops])
    return cu.cuStreamBatchMemOp_v2(stream if stream is not None else s, len(ops), arr, flags)
def read(n=24):
    b = ctypes.create_string_buffer(n)
    ok(cu.cuMemcpyDtoH_v2(b, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh")
    return b.raw
print("batch", batch((WRITE32, p, 7, 0, 0, 0), (WRITE64, p + 8, 0x1122334455667788, 0, 0, 0), (BARRIER, 1, 0, 0, 0, 0),
                     (WAIT32, p, 7, EQ, 0, 0), (WAIT64, p + 8, 0x1122334455667000, GEQ, 0, 0),
                     (WAIT32, p, 6, AND, 0, 0), (WRITE32, p + 16, 9, 0, 0, 0)))
ok(cu.cuStreamSynchronize(s), "sync")
# A write without a memory barrier (flags 1) in a batch: the H100 (driver 580) refused the batch with
# CUDA_ERROR_INVALID_VALUE, and so does the simulated device; the stub queues the batch, so the refusal comes at the
# next synchronising call, and nothing of the batch ran.
print("no barrier in a batch", batch((WRITE32, p + 16, 10, 0, 0, 0), (WRITE32, p + 16, 11, 1, 0, 0)), "then sync",
      cu.cuStreamSynchronize(s), "untouched", struct.unpack("<I", read(20)[16:20])[0])
v = struct.unpack("<IIQI", read(20))
print("values", v[0], hex(v[2]), v[3])
print("write then wait in one batch", batch((WRITE32, p + 4, 0xffff, 0, 0, 0), (WAIT32, p + 4, 0xff0000, NOR, 0, 0),
                                             (WAIT32, p + 4, 0xfffffffe, GEQ, 0, 0)), cu.cuStreamSynchronize(s))
# The simulated device, like most GPUs, has CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES 0: a flush (standalone or a
# wait's FLUSH flag, 1 << 30) is refused at the call, with nothing queued.
print("flush", batch((WRITE32, p + 4, 3, 0, 0, 0), (FLUSH, 0, 0, 0, 0, 0)), "flag",
      batch((WAIT32, p, 7, EQ | (1 << 30), 0, 0)), "single",
      cu.cuStreamWaitValue32_v2(s, ctypes.c_uint64(p), 7, 1 << 30), "then sync", cu.cuStreamSynchronize(s),
      "untouched", struct.unpack("<I", read(8)[4:8])[0])
host = ctypes.c_void_p()
ok(cu.cuMemAllocHost_v2(ctypes.byref(host), ctypes.c_size_t(64)), "pinned")
print("pinned host memory", batch((WRITE32, host.value, 1, 0, 0, 0)))
print("unknown address", batch((WRITE32, 0x1000, 1, 0, 0, 0)))
print("past the allocation", batch((WRITE64, p + 60, 1, 0, 0, 0)))
print("300 operations", cu.cuStreamBatchMemOp_v2(s, 300, (Op * 300)(), 0))
print("bad operation", batch((99, p, 1, 0, 0, 0)), "then sync", cu.cuStreamSynchronize(s))
print("flags 1", batch((WRITE32, p, 1, 0, 0, 0), flags=1), "then sync", cu.cuStreamSynchronize(s))
print("empty batch", batch(), cu.cuStreamSynchronize(s))
ok(cu.cuStreamWriteValue32_v2(s, ctypes.c_uint64(p + 20), 5, 0), "write value")
ok(cu.cuStreamWaitValue32_v2(s, ctypes.c_uint64(p + 20), 5, EQ), "wait value")
ok(cu.cuStreamSynchronize(s), "sync 2")
print("write value", struct.unpack("<I", read(24)[20:24])[0])
got, green = ctypes.c_void_p(), ctypes.c_void_p(1)
ok(cu.cuStreamGetCtx_v2(s, ctypes.byref(got), ctypes.byref(green)), "get ctx v2")
print("stream context", got.value == ctx.value, "green", green.value)
ok(cu.cuStreamGetCtx_v2(None, ctypes.byref(got), None), "get ctx v2 null stream")
print("null stream context", got.value == ctx.value)
e0, e1 = ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuEventCreate(ctypes.byref(e0), 0), "event")
ok(cu.cuEventCreate(ctypes.byref(e1), 0), "event")
ok(cu.cuEventRecord(e0, s), "record")
ok(cu.cuCtxRecordEvent(ctx, e1), "ctx record")
ok(cu.cuCtxWaitEvent(ctx, e0), "ctx wait")
ok(cu.cuEventSynchronize(e1), "event sync")
ms = ctypes.c_float()
print("ctx record", cu.cuEventQuery(e1), cu.cuEventElapsedTime_v2(ctypes.byref(ms), e0, e1), ms.value >= 0)
print("ctx record bad event", cu.cuCtxRecordEvent(ctx, ctypes.c_void_p(0x5a5a0)), "then sync", cu.cuCtxSynchronize())
# Batch memory-operation graph nodes.
class NodeParams(ctypes.Structure):  # CUDA_BATCH_MEM_OP_NODE_PARAMS
    _fields_ = [("ctx", ctypes.c_void_p), ("count", ctypes.c_uint), ("paramArray", ctypes.POINTER(Op)),
                ("flags", ctypes.c_uint)]
def params(*ops):
    arr = (Op * len(ops))(*[Op(*o) for o in ops])
    return NodeParams(ctx, len(ops), ctypes.cast(arr, ctypes.POINTER(Op)), 0), arr
g = ctypes.c_void_p()
ok(cu.cuGraphCreate(ctypes.byref(g), 0), "graph")
n1, n2 = ctypes.c_void_p(), ctypes.c_void_p()
p1, keep1 = params((WRITE32, p + 40, 11, 0, 0, 0), (WRITE64, p + 48, 0xabcdef, 0, 0, 0))
ok(cu.cuGraphAddBatchMemOpNode(ctypes.byref(n1), g, None, 0, ctypes.byref(p1)), "add node 1")
p2, keep2 = params((WAIT32, p + 40, 11, EQ, 0, 0), (WRITE32, p + 56, 12, 0, 0, 0))
deps = (ctypes.c_void_p * 1)(n1.value)
ok(cu.cuGraphAddBatchMemOpNode(ctypes.byref(n2), g, deps, 1, ctypes.byref(p2)), "add node 2")
t = ctypes.c_int()
ok(cu.cuGraphNodeGetType(n2, ctypes.byref(t)), "type")
back = NodeParams()
ok(cu.cuGraphBatchMemOpNodeGetParams(n1, ctypes.byref(back)), "get params")
print("node type", t.value, "params back", back.count, back.ctx == ctx.value, back.paramArray[0].operation,
      back.paramArray[0].address == p + 40, back.paramArray[1].value64 == 0xabcdef, back.flags)
ex = ctypes.c_void_p()
ok(cu.cuGraphInstantiateWithFlags(ctypes.byref(ex), g, ctypes.c_ulonglong(0)), "instantiate")
ok(cu.cuGraphLaunch(ex, s), "launch")
ok(cu.cuStreamSynchronize(s), "sync graph")
v = struct.unpack("<IIQII", read(64)[40:64])
print("graph values", v[0], hex(v[2]), v[3])
p3, keep3 = params((WRITE32, p + 56, 21, 0, 0, 0))
ok(cu.cuGraphBatchMemOpNodeSetParams(n2, ctypes.byref(p3)), "set params")
p4, keep4 = params((WAIT32, p + 40, 11, GEQ, 0, 0), (WRITE32, p + 56, 31, 0, 0, 0))
ok(cu.cuGraphExecBatchMemOpNodeSetParams(ex, n2, ctypes.byref(p4)), "exec set params")
ok(cu.cuGraphLaunch(ex, s), "launch 2")
ok(cu.cuStreamSynchronize(s), "sync graph 2")
print("after exec update", struct.unpack("<I", read(64)[56:60])[0])
ok(cu.cuGraphBatchMemOpNodeGetParams(n2, ctypes.byref(back)), "get params 2")
print("graph node keeps its own", back.count, back.paramArray[0].value64 & 0xffffffff)
ph, keeph = params((WRITE32, host.value, 1, 0, 0, 0))
print("graph node on host memory", cu.cuGraphAddBatchMemOpNode(ctypes.byref(n1), g, None, 0, ctypes.byref(ph)))
class GenericParams(ctypes.Structure):  # CUgraphNodeParams with the memOp member
    _fields_ = [("type", ctypes.c_int), ("reserved0", ctypes.c_int * 3), ("memOp", NodeParams),
                ("rest", ctypes.c_longlong * 25), ("reserved2", ctypes.c_longlong)]
assert ctypes.sizeof(GenericParams) == 256
p5, keep5 = params((WRITE32, p + 60, 41, 0, 0, 0))
gp = GenericParams(type=12, memOp=p5)
n3 = ctypes.c_void_p()
print("generic add", cu.cuGraphAddNode(ctypes.byref(n3), g, None, 0, ctypes.byref(gp)))
'''


def test_batch_memops_and_context_events(server: NodeServer) -> None:
    r = run_client(CLIENT, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()[-3000:]
    out = r.stdout.splitlines()
    assert "batch 0" in out and "values 7 0x1122334455667788 9" in out, out
    assert "write then wait in one batch 0 0" in out, out
    assert "no barrier in a batch 0 then sync 1 untouched 9" in out, out
    assert "flush 801 flag 801 single 801 then sync 0 untouched 65535" in out, out
    assert "pinned host memory 801" in out and "unknown address 801" in out, out  # CUDA_ERROR_NOT_SUPPORTED
    assert "past the allocation 801" in out and "300 operations 1" in out, out
    # Refused by the driver on the node: the error comes back with the next synchronising call.
    assert "bad operation 0 then sync 1" in out and "flags 1 0 then sync 1" in out, out
    assert "empty batch 0 0" in out and "write value 5" in out, out
    assert "stream context True green None" in out and "null stream context True" in out, out
    assert "ctx record 0 0 True" in out, out
    assert "ctx record bad event 0 then sync 400" in out, out  # CUDA_ERROR_INVALID_HANDLE
    assert "node type 12 params back 2 True 2 True True 0" in out, out  # CU_GRAPH_NODE_TYPE_BATCH_MEM_OP, a write
    assert "graph values 11 0xabcdef 12" in out and "after exec update 31" in out, out
    assert "graph node keeps its own 1 21" in out, out  # the graph's node has SetParams', the executable's its own
    assert "graph node on host memory 801" in out and "generic add 0" in out, out


SINGLES = PRELUDE + r'''
import struct
ctx = ctx0()
s = ctypes.c_void_p()
ok(cu.cuStreamCreate(ctypes.byref(s), 1), "stream")
r, p = alloc(64); ok(r, "alloc")
ok(cu.cuStreamWriteValue64_v2(s, ctypes.c_uint64(p + 8), ctypes.c_uint64(0x1122334455667788), 0), "write 64")
ok(cu.cuStreamWaitValue64_v2(s, ctypes.c_uint64(p + 8), ctypes.c_uint64(0x1122334455667788), 1), "wait 64")
ok(cu.cuStreamWriteValue32_v2_ptsz(None, ctypes.c_uint64(p), 3, 0), "write 32 per-thread stream")
ok(cu.cuStreamWaitValue32_v2_ptsz(None, ctypes.c_uint64(p), 3, 1), "wait 32 per-thread stream")
ok(cu.cuCtxSynchronize(), "sync")
b = ctypes.create_string_buffer(16)
ok(cu.cuMemcpyDtoH_v2(b, ctypes.c_uint64(p), ctypes.c_size_t(16)), "dtoh")
v = struct.unpack("<IIQ", b.raw)
print("singles", v[0], hex(v[2]))
host = ctypes.c_void_p()
ok(cu.cuMemAllocHost_v2(ctypes.byref(host), ctypes.c_size_t(64)), "pinned")
print("pinned", cu.cuStreamWriteValue32_v2(s, ctypes.c_uint64(host.value), 1, 0),
      cu.cuStreamWaitValue64_v2(s, ctypes.c_uint64(host.value), ctypes.c_uint64(0), 0))
print("past the end", cu.cuStreamWriteValue64_v2(s, ctypes.c_uint64(p + 60), ctypes.c_uint64(1), 0))
print("made up", cu.cuStreamWriteValue32_v2(s, ctypes.c_uint64(0x1000), 1, 0), cu.cuStreamSynchronize(s))
'''


def test_single_memops_through_the_stub(server: NodeServer) -> None:
    """The single forms run on the session's memory (both widths, the per-thread-stream forms), and the stub refuses
    pinned host memory and memory the node never handed out with CUDA_ERROR_NOT_SUPPORTED, as the batch form."""
    r = run_client(SINGLES, server.client_env())
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()[-3000:]
    out = r.stdout.splitlines()
    assert "singles 3 0x1122334455667788" in out, out
    assert "pinned 801 801" in out and "past the end 801" in out and "made up 801 0" in out, out


def _shm_session(sock: str, token: str, size: int) -> tuple[socket.socket, mmap.mmap]:
    """A hand-written co-located client (as the stub's HELLO with a shared-memory offer): the socket and the region
    as this process maps it."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(20)
    c.connect(sock)
    hello = {"proto": PROTO_VERSION, "token": token, "ops_hash": OPS_HASH, "pid": 1, "host": "t", "shm": size}
    c.sendall(encode_frame(FrameType.HELLO, msgpack.packb(hello)))
    h = decode_header(c.recv(16, socket.MSG_WAITALL), 1 << 16)
    assert h.type == FrameType.HELLO_OK and msgpack.unpackb(c.recv(h.length, socket.MSG_WAITALL))["shm"]
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    region = mmap.mmap(fd, size)
    socket.send_fds(c, [encode_frame(FrameType.SHM, struct.pack("<Q", size))], [fd])
    os.close(fd)
    h = decode_header(c.recv(16, socket.MSG_WAITALL), 16)
    assert h.type == FrameType.SHM and c.recv(4, socket.MSG_WAITALL) == b"\0\0\0\0"
    return c, region


def _call(c: socket.socket, payload: bytes, seq: int) -> tuple[int, int, bytes]:
    c.sendall(encode_frame(FrameType.BATCH, payload, FLAG_WANT_REPLY, seq=seq))
    h = decode_header(c.recv(16, socket.MSG_WAITALL))
    assert h.type == FrameType.REPLY, h
    body = c.recv(h.length, socket.MSG_WAITALL)
    result, deferred = struct.unpack("<II", body[:8])
    return result, deferred, body[24:]


def test_the_worker_checks_single_memops_addresses(tmp_path: Path) -> None:
    """A client that skips the stub's check (hand-written here) still reaches only its own device memory: the worker
    answers a wait or write outside the session's allocations with CUDA_ERROR_INVALID_VALUE before the driver sees
    it. The simulated device itself accepts host memory registered with it, as the driver does: a write to the
    worker's mapping of the shared-memory region (its doorbell mailbox, or the client's part) would land there
    without the worker's check; here the region's bytes stay untouched."""
    sock = str(Path("/tmp") / f"fargpu-memops-{os.getpid()}.sock")
    node = start_server(tmp_path, "--unix", sock)
    size = 16 << 20
    try:
        c, region = _shm_session(sock, node.token, size)
        with c:
            op = {n: OPS[n][0] for n in ("cuDevicePrimaryCtxRetain", "FG_SET_CTX", "FG_PING", "cuMemAlloc_v2",
                                         "cuMemFree_v2", "FG_SHM_DEVPTR", "cuStreamWriteValue32_v2",
                                         "cuStreamWriteValue64_v2", "cuStreamWaitValue32_v2", "cuStreamWaitValue64_v2")}
            res, _, outs = _call(c, encode_record(op["cuDevicePrimaryCtxRetain"], struct.pack("<Bi", 1, 0)), 1)
            assert res == 0
            set_ctx = encode_record(op["FG_SET_CTX"], outs[:8])
            seq = iter(range(2, 1000))

            def sync(rec: bytes) -> tuple[int, bytes]:
                res, _, outs = _call(c, set_ctx + rec, next(seq))
                return res, outs

            def memop(name: str, addr: int, value: int, flags: int = 0) -> int:
                args = struct.pack("<QQ" + ("I" if name.endswith("32_v2") else "Q") + "I", 0, addr, value, flags)
                res, deferred, _ = _call(c, set_ctx + encode_record(op[name], args) + encode_record(op["FG_PING"], b""),
                                         next(seq))
                assert res == 0
                return deferred

            res, outs = sync(encode_record(op["cuMemAlloc_v2"], struct.pack("<Q", 64)))
            assert res == 0
            (p,) = struct.unpack("<Q", outs[:8])
            res, outs = sync(encode_record(op["cuMemAlloc_v2"], struct.pack("<Q", 64)))
            (freed,) = struct.unpack("<Q", outs[:8])
            assert sync(encode_record(op["cuMemFree_v2"], struct.pack("<Q", freed)))[0] == 0
            client_at = 4096 + 2 * (256 << 10)  # fg_shm.h: the header and the doorbell's two mailboxes come first
            res, outs = sync(encode_record(op["FG_SHM_DEVPTR"], struct.pack("<Q", client_at)))
            assert res == 0
            (mapped,) = struct.unpack("<Q", outs[:8])
            mailbox = mapped - client_at + 4096
            # The session's memory: writes land, a wait met passes, one not met is the sim's refusal (801), so the
            # values reached the simulated device.
            assert memop("cuStreamWriteValue32_v2", p, 7) == 0
            assert memop("cuStreamWriteValue64_v2", p + 8, 0x1122334455667788) == 0
            assert memop("cuStreamWaitValue32_v2", p, 7, 1) == 0  # CU_STREAM_WAIT_VALUE_EQ
            assert memop("cuStreamWaitValue64_v2", p + 8, 0x1122334455667788, 1) == 0
            assert memop("cuStreamWaitValue32_v2", p, 8, 1) == 801
            before = region[:]
            for name in ("cuStreamWriteValue32_v2", "cuStreamWriteValue64_v2", "cuStreamWaitValue32_v2",
                         "cuStreamWaitValue64_v2"):
                for addr in (mapped, mailbox + 64, freed, 0x1000, p + 62, p - 8):
                    assert memop(name, addr, 0x5a5a5a5a, 0) == 1, (name, hex(addr))  # CUDA_ERROR_INVALID_VALUE
            assert region[:] == before
            assert memop("cuStreamWaitValue32_v2", p, 7, 1) == 0  # the session goes on
    finally:
        stop_server(node)
