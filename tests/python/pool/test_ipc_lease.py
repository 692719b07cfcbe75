"""CUDA IPC between the processes of one lease, brokered by the node, and refused to another lease. A live pool
manager, a node of two simulated devices, and three real stub clients, each its own session and worker: A (lease
1, GPU 0) exports device memory (cuIpcGetMemHandle), an interprocess event and a VMM allocation
(cuMemExportToShareableHandle, a POSIX file descriptor it passes with SCM_RIGHTS, as NCCL does); B (lease 1, GPU 1)
opens all three, reads A's bytes, writes them for A to see, runs a kernel on them and closes; C (lease 2) presents
the same tokens and descriptor and is refused each time, and the node logs it. A session sharing memory is not
paged out. (The simulated device is a test double; its memory is shared between the workers as a GPU's would be.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _live_pool import LivePool
from cuda_ctypes import TEST_PTX

from fargpu import paths

COMMON = r'''
import ctypes, json, socket, sys
cu = ctypes.CDLL("libcuda.so.1")
C = ctypes.c_uint64
def ok(r, what):
    if r != 0:
        print(json.dumps({"fail": what, "rc": r}), flush=True); sys.exit(1)
class Prop(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("loc_type", ctypes.c_int),
                ("loc_id", ctypes.c_int), ("win32", ctypes.c_void_p), ("compression", ctypes.c_ubyte),
                ("gpuDirect", ctypes.c_ubyte), ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]
class Access(ctypes.Structure):
    _fields_ = [("loc_type", ctypes.c_int), ("loc_id", ctypes.c_int), ("flags", ctypes.c_int)]
class Handle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]
    def raw(self):
        return bytes(self.reserved)
    @classmethod
    def of(cls, b):
        h = cls(); h.reserved[:] = list(b); return h
ok(cu.cuInit(0), "init")
DEV = int(sys.argv[1])
ctx = ctypes.c_void_p()
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), DEV), "retain")
ok(cu.cuCtxSetCurrent(ctx), "set")
N = 1 << 20
VMM = 2 << 20
def read(p, n=N):
    buf = ctypes.create_string_buffer(n)
    ok(cu.cuMemcpyDtoH_v2(buf, C(p), ctypes.c_size_t(n)), "dtoh")
    return sorted(set(buf.raw))
def map_handle(h, dev):
    va = C()
    ok(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(VMM), ctypes.c_size_t(0), C(0), C(0)), "reserve")
    ok(cu.cuMemMap(C(va.value), ctypes.c_size_t(VMM), ctypes.c_size_t(0), C(h), C(0)), "map")
    acc = (Access * 1)(Access(1, dev, 3))
    ok(cu.cuMemSetAccess(C(va.value), ctypes.c_size_t(VMM), acc, ctypes.c_size_t(1)), "access")
    return va.value
'''

EXPORTER = COMMON + r'''
p = C(); ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(N)), "alloc")
ok(cu.cuMemsetD8_v2(C(p.value), 0x11, ctypes.c_size_t(N)), "memset")
mh = Handle(); ok(cu.cuIpcGetMemHandle(ctypes.byref(mh), C(p.value)), "ipc get")
mh2 = Handle(); ok(cu.cuIpcGetMemHandle(ctypes.byref(mh2), C(p.value + 4096)), "ipc get again")
ev = ctypes.c_void_p(); ok(cu.cuEventCreate(ctypes.byref(ev), 6), "event")  # DISABLE_TIMING | INTERPROCESS
ok(cu.cuEventRecord(ev, None), "record")
eh = Handle(); ok(cu.cuIpcGetEventHandle(ctypes.byref(eh), ev), "event handle")
plain = ctypes.c_void_p(); ok(cu.cuEventCreate(ctypes.byref(plain), 0), "plain event")
not_ipc = cu.cuIpcGetEventHandle(ctypes.byref(Handle()), plain)
prop = Prop(1, 1, 1, DEV)  # PINNED, POSIX_FILE_DESCRIPTOR, DEVICE
h = C(); ok(cu.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(VMM), ctypes.byref(prop), C(0)), "create")
va = map_handle(h.value, DEV)
ok(cu.cuMemsetD8_v2(C(va), 0x22, ctypes.c_size_t(VMM)), "memset vmm")
fd = ctypes.c_int(-1); ok(cu.cuMemExportToShareableHandle(ctypes.byref(fd), C(h.value), 1, C(0)), "export")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(sys.argv[2]); srv.listen(4)
print(json.dumps({"mem": mh.raw().hex(), "same": mh.raw() == mh2.raw(), "event": eh.raw().hex(),
                  "not_ipc": not_ipc}), flush=True)
def serve():  # B, then C: each gets the descriptor over a unix socket
    for _ in range(2):
        c, _ = srv.accept(); socket.send_fds(c, [b"fd"], [fd.value]); c.close()
import threading; threading.Thread(target=serve, daemon=True).start()
sys.stdin.readline()  # B has written
print(json.dumps({"after_b": read(p.value)}), flush=True)
sys.stdin.readline()
'''

IMPORTER = COMMON + r'''
tokens = json.loads(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[2])
_, fds, _, _ = socket.recv_fds(s, 16, 1)
out = {}
mh = Handle.of(bytes.fromhex(tokens["mem"]))
p = C(); out["open"] = cu.cuIpcOpenMemHandle_v2(ctypes.byref(p), mh, 1)
out["open_again"] = cu.cuIpcOpenMemHandle_v2(ctypes.byref(C()), mh, 1)
bogus = Handle.of(bytes.fromhex(tokens["mem"])[:8] + bytes(56))  # the magic, but an id nobody made
out["open_bogus"] = cu.cuIpcOpenMemHandle_v2(ctypes.byref(C()), bogus, 1)
eh = Handle.of(bytes.fromhex(tokens["event"]))
ev = ctypes.c_void_p(); out["event_open"] = cu.cuIpcOpenEventHandle(ctypes.byref(ev), eh)
vh = C(); out["import"] = cu.cuMemImportFromShareableHandle(ctypes.byref(vh), ctypes.c_void_p(fds[0]), 1)
if out["open"] == 0:
    out["read"] = read(p.value)
    ok(cu.cuMemsetD8_v2(C(p.value), 0x33, ctypes.c_size_t(N)), "memset shared")
    out["copy"] = cu.cuMemcpyDtoD_v2(C(p.value), C(p.value + N // 2), ctypes.c_size_t(N // 2))
    mod = ctypes.c_void_p(); ok(cu.cuModuleLoadData(ctypes.byref(mod), open(sys.argv[4], "rb").read() + b"\0"), "load")
    fill = ctypes.c_void_p(); ok(cu.cuModuleGetFunction(ctypes.byref(fill), mod, b"fg_fill_u32"), "func")
    a, b, c = C(p.value + N // 2), ctypes.c_uint32(0x33333333), ctypes.c_uint64(N // 8)
    args = (ctypes.c_void_p * 3)(ctypes.addressof(a), ctypes.addressof(b), ctypes.addressof(c))
    out["kernel"] = cu.cuLaunchKernel(fill, 8, 1, 1, 128, 1, 1, 0, None, args, None) or cu.cuCtxSynchronize()
if out["event_open"] == 0:
    out["event_sync"] = cu.cuEventSynchronize(ev)
    out["event_wait"] = cu.cuStreamWaitEvent(None, ev, 0) or cu.cuCtxSynchronize()
if out["import"] == 0:
    out["vmm_read"] = read(map_handle(vh.value, DEV), VMM)
out["bad_fd"] = cu.cuMemImportFromShareableHandle(ctypes.byref(C()), ctypes.c_void_p(0), 1)
if out["open"] == 0:
    out["close"] = [cu.cuIpcCloseMemHandle(C(p.value)), cu.cuIpcCloseMemHandle(C(p.value)),
                    cu.cuIpcCloseMemHandle(C(p.value))]
print(json.dumps(out), flush=True)
'''


def _client(lease: dict[str, object], code: str, *args: str) -> subprocess.Popen[str]:
    endpoints = lease["endpoints"]
    assert isinstance(endpoints, list)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(paths.stub_dir()),
           "FARGPU_SERVER": str(endpoints[0]).removeprefix("tcp://"), "FARGPU_TOKEN": str(lease["token"])}
    return subprocess.Popen([sys.executable, "-P", "-c", code, *args], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


def _line(p: subprocess.Popen[str], pool: LivePool) -> dict[str, object]:
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, (p.stderr.read() if p.stderr else "") + pool.logs()
    out: dict[str, object] = json.loads(line)
    assert "fail" not in out, (out, p.stderr.read() if p.stderr else "")
    return out


def test_ipc_between_sessions_of_one_lease_and_refused_to_another(tmp_path: Path) -> None:
    pool = LivePool.start(tmp_path, store_args=["--memory-only"], node_env={"FARGPU_SIM_DEVICES": "2"})
    procs: list[subprocess.Popen[str]] = []
    sock = str(tmp_path / "fd.sock")
    try:
        one = pool.lease(vram="64M", gpus=2)
        other = pool.lease(vram="64M", gpus=1)
        a = _client(one, EXPORTER, "0", sock)
        procs.append(a)
        tokens = _line(a, pool)
        assert tokens["same"] is True and tokens["not_ipc"] == 1, tokens  # one token per allocation; no INTERPROCESS
        b = _client(one, IMPORTER, "1", sock, json.dumps(tokens), str(TEST_PTX))
        procs.append(b)
        got = _line(b, pool)
        assert got["open"] == 0 and got["open_again"] == 0 and got["open_bogus"] == 1, got
        assert got["read"] == [0x11], got  # A's bytes, from B's session on the other GPU
        assert got["copy"] == 0 and got["kernel"] == 0, got
        assert got["event_open"] == 0 and got["event_sync"] == 0 and got["event_wait"] == 0, got
        assert got["import"] == 0 and got["vmm_read"] == [0x22], got
        assert got["bad_fd"] == 1 and got["close"] == [0, 0, 1], got  # two opens, two closes, then none
        assert a.stdin is not None
        a.stdin.write("check\n")
        a.stdin.flush()
        assert _line(a, pool)["after_b"] == [0x33], "B's writes are in A's memory"
        # A session of another lease gets nothing from the same tokens and descriptor.
        c = _client(other, IMPORTER, "0", sock, json.dumps(tokens), str(TEST_PTX))
        procs.append(c)
        refused = _line(c, pool)
        assert refused["open"] == 1 and refused["event_open"] == 1 and refused["import"] == 1, refused
        log = (tmp_path / "node.log").read_text(errors="replace")
        assert "an IPC handle of another lease" in log, log[-3000:]
        # A shares memory (B has ended; A's session is lease 1's one left): a page-out is refused with the reason.
        assert b.wait(30) == 0
        sessions = [s for s in pool.get("/v1/sessions") if s["lease_id"] == one["lease_id"]]
        assert sessions, pool.get("/v1/sessions")
        r = pool.admin_post(f"/v1/admin/sessions/{sessions[0]['session_id']}/page-out", {"to": "host"})
        assert r.status_code == 202, r.text
        outcome = pool.wait_session(sessions[0]["session_id"], lambda s: bool(s.get("page_result")),
                                    "the page-out outcome")
        assert "CUDA IPC" in outcome["page_result"] and outcome["state"] == "resident", outcome
    finally:
        for p in procs:
            try:
                p.communicate("go\n", timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        pool.stop()
