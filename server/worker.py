"""A session worker: one process per client session (so one session's crash or sticky GPU fault cannot
take another down). The node agent passes it the client's socket after authenticating the HELLO; the
worker opens the device through the replay engine (cffi, ABI mode), answers HELLO_OK, and hands the socket
to the engine's C loop — one cffi call for the whole session, so Python never touches a record.

Usage (by the agent only): python -m fargpu.server.worker --fd N --ctl-fd N --status-fd N --driver PATH
    [--ledger-fd N --ledger-slot N --ctx-charge BYTES] ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

import cffi

from fargpu import paths, timeline
from fargpu.protocol.handshake import close_frame, hello_err, hello_ok, hello_timeout
from fargpu.protocol.wire import HEADER_SIZE, FrameType, ProtocolError, decode_header, encode_frame


def _load() -> tuple[cffi.FFI, object]:
    ffi = cffi.FFI()
    ffi.cdef((paths.native_dir() / "fgs_public.h").read_text())
    return ffi, ffi.dlopen(str(paths.replay_lib()))


CONSUMED_WAIT_S = 120.0
ADDR_NO_RANDOMIZE = 0x0040000  # personality(2)
PROT_NONE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0, 0x02, 0x20, 0x4000


def keep_addresses_stable() -> None:
    """FARGPU_WORKER_STABLE_VA=1 (the agent's default): run without address-space randomisation. The agent starts
    workers that way (server/spawn.py); one started otherwise turns it off for itself and executes itself again,
    once. The real driver places device addresses where it likes in the process's address space
    (bench/probe_va.c); without randomisation every worker of a node finds the driver's range at the same place,
    which is what lets a parked session get its old addresses back in a new worker (server/replay/park.c). Where
    the kernel or a seccomp profile refuses, the worker says so and carries on."""
    if os.environ.get("FARGPU_WORKER_STABLE_VA") != "1":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    current = libc.personality(0xFFFFFFFF)
    if current == -1 or current & ADDR_NO_RANDOMIZE:
        return
    if os.environ.get("FARGPU_WORKER_REEXECUTED") == "1" or libc.personality(current | ADDR_NO_RANDOMIZE) == -1:
        why = os.strerror(ctypes.get_errno()) if os.environ.get("FARGPU_WORKER_REEXECUTED") != "1" else "not kept"
        print(f"fargpu-worker[{os.getpid()}]: cannot turn off address randomisation ({why}): a parked session may "
              "not get its addresses back (the node's --no-stable-addresses says it on purpose)", file=sys.stderr)
        return
    os.environ["FARGPU_WORKER_REEXECUTED"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def bias_addresses() -> None:
    """FARGPU_WORKER_VA_BIAS_MB (a restoring worker): map that much address space, inaccessible and never backed,
    before the driver maps its own range, so that the driver's range starts at or below where it started in the
    worker that parked the session, and the restore can fill up to each old address (park.c)."""
    mb = int(os.environ.get("FARGPU_WORKER_VA_BIAS_MB", "0") or 0)
    if mb <= 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mmap(None, mb << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)


def occupy_for_test(spec: str) -> None:
    """Tests: "0xADDR:0xLEN" maps that range in this worker before a restore, as if the driver held it here."""
    if not spec:
        return
    import ctypes

    addr, _, length = spec.partition(":")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    # PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
    got = libc.mmap(int(addr, 16), int(length, 16), 0, 0x02 | 0x20 | 0x4000 | 0x100000, -1, 0)
    print(f"fargpu-worker[{os.getpid()}]: test: occupied {spec} -> {(got or 0):#x}", file=sys.stderr)


def await_consumed(fd: int, status: Any) -> str:
    """The agent's answer once a restored session's parked state is removed: "consumed", or why not. A command
    that comes first (the agent holds them back meanwhile; this is the backstop) is refused with its failure status,
    so whoever sent it does not wait for an answer."""
    deadline = time.monotonic() + CONSUMED_WAIT_S
    while True:
        line = read_ctl_line(fd, max(0.0, deadline - time.monotonic()))
        word = line.split(" ", 1)[0]
        refusal = {"park": "park-failed", "pageout": "pageout-failed", "pagein": "pagein-failed"}.get(word)
        if refusal is None:
            return line
        status.write(f"{refusal} the session is being restored\n")


def read_ctl_line(fd: int, timeout_s: float) -> str:
    """One line from the agent's control pipe, a byte at a time (what follows it is fgs_serve's); "" on EOF or when
    none came within timeout_s."""
    import select

    line = b""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        c = os.read(fd, 1)
        if not c:
            return ""
        if c == b"\n":
            return line.decode(errors="replace")
        line += c


def _slab_fds(spec: str) -> list[int]:
    """The descriptors of "FIRST:COUNT" (--pool-vmm-fds); [] for none or a malformed spec."""
    first, _, count = spec.partition(":")
    if not (first.isdigit() and count.isdigit()) or int(first) < 3:
        return []
    return list(range(int(first), int(first) + int(count)))


def take_shm(sock: socket.socket, lib: Any, ffi: cffi.FFI, S: Any, size: int) -> bool:
    """The shared-memory step of the handshake (SPEC.md, "Shared memory"): the client's SHM frame brings its
    sealed memfd; the engine maps and registers it. Answers u32 0 (in use) or 1 (refused: the client goes on
    without it). False when the client broke the handshake (the session ends)."""
    sock.settimeout(hello_timeout())
    fds: list[int] = []
    buf = b""
    try:
        while len(buf) < HEADER_SIZE + 8:
            msg, got, _flags, _addr = socket.recv_fds(sock, HEADER_SIZE + 8 - len(buf), 1)
            fds += got
            if not msg:
                raise ProtocolError("the client closed the connection during the shared-memory handshake")
            buf += msg
        hdr = decode_header(buf[:HEADER_SIZE], 8)
        (offered,) = struct.unpack("<Q", buf[HEADER_SIZE:])
        if hdr.type != FrameType.SHM or hdr.length != 8 or offered != size or len(fds) != 1:
            raise ProtocolError("expected the SHM frame with one memfd of the offered size")
    except (OSError, ProtocolError) as exc:
        for fd in fds:
            os.close(fd)
        why = str(exc) or "no SHM frame in time"
        print(f"fargpu-worker[{os.getpid()}]: shared-memory handshake failed: {why}", file=sys.stderr)
        with contextlib.suppress(OSError):
            sock.sendall(close_frame(f"shared-memory handshake failed: {why}"))
        return False
    finally:
        sock.settimeout(None)
    err = ffi.new("char[]", 256)
    rc = lib.fgs_shm_attach(S, fds[0], size, err, 256)
    if rc != 0:
        print(f"fargpu-worker[{os.getpid()}]: shared memory refused: {ffi.string(err).decode(errors='replace')}",
              file=sys.stderr)
    sock.sendall(encode_frame(FrameType.SHM, struct.pack("<I", 0 if rc == 0 else 1)))
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fargpu-worker")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--status-fd", type=int, required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--quota", type=int, default=0)
    ap.add_argument("--max-frame", type=int, default=80 * 1024 * 1024)
    ap.add_argument("--attach-fd", type=int, default=-1)
    ap.add_argument("--attach-key", default="")
    ap.add_argument("--driver-version", default="", help="the node driver's version string, told to the client")
    ap.add_argument("--ledger-fd", type=int, default=-1, help="the lease's VRAM ledger (server/lease_ledger.py)")
    ap.add_argument("--ledger-slot", type=int, default=0)
    ap.add_argument("--ctx-charge", type=int, default=0, help="bytes charged per context the session creates")
    ap.add_argument("--node-fd", type=int, default=-1, help="the node's resident ledger (server/pager.py)")
    ap.add_argument("--node-slot", type=int, default=0)
    ap.add_argument("--pool-fd", type=int, default=-1, help="the node's host page pool (a memfd)")
    ap.add_argument("--pool-vmm-fds", default="",
                    help="FIRST:COUNT: the pool is COUNT slabs of host-NUMA driver memory at descriptors FIRST up "
                         "(server/host_pool_vmm.py)")
    ap.add_argument("--pool-vmm-slab", type=int, default=0, help="each slab's bytes")
    ap.add_argument("--restore-dir", default="", help="restore a parked session from this state directory")
    ap.add_argument("--restore-pages", default="", help="the parked session's memory (a spill file)")
    ap.add_argument("--shm", type=int, default=0, help="bytes of shared memory a co-located client offered")
    ap.add_argument("--ipc-fd", type=int, default=-1, help="the node's CUDA IPC broker (server/ipc_broker.py)")
    a = ap.parse_args(argv)
    timeline.mark_process_start("worker.exec", a.session)
    timeline.mark("worker.main", a.session)
    if argv is None:
        keep_addresses_stable()
    os.set_blocking(a.fd, True)
    sock = socket.socket(fileno=a.fd)
    status = os.fdopen(a.status_fd, "w", buffering=1)
    ffi, lib = _load()
    err = ffi.new("char[]", 512)
    bias_addresses()
    S = lib.fgs_open(a.driver.encode(), a.quota, a.max_frame, err, 512)  # type: ignore[attr-defined]
    timeline.mark("worker.device_open", a.session)
    if S == ffi.NULL:
        reason = ffi.string(err).decode(errors="replace")
        print(f"fargpu-worker[{os.getpid()}]: cannot open the device: {reason}", file=sys.stderr)
        sock.sendall(hello_err(f"the node could not open its device: {reason}"))
        return 1
    if a.ledger_fd >= 0 and lib.fgs_set_ledger(S, a.ledger_fd, a.ledger_slot, a.ctx_charge) != 0:  # type: ignore[attr-defined]
        print(f"fargpu-worker[{os.getpid()}]: the lease's VRAM ledger is not valid", file=sys.stderr)
        sock.sendall(hello_err("the node could not set up the lease's VRAM accounting"))
        lib.fgs_close(S)  # type: ignore[attr-defined]
        return 1
    slabs = _slab_fds(a.pool_vmm_fds)
    if (lib.fgs_set_pager(S, a.status_fd, a.pool_fd, a.node_fd, a.node_slot) != 0  # type: ignore[attr-defined]
            or (slabs and lib.fgs_pager_use_vmm_pool(  # type: ignore[attr-defined]
                S, ffi.new("int[]", slabs), len(slabs), a.pool_vmm_slab) != 0)):
        print(f"fargpu-worker[{os.getpid()}]: the node's resident ledger is not valid", file=sys.stderr)
        sock.sendall(hello_err("the node could not set up paging for the session"))
        lib.fgs_close(S)  # type: ignore[attr-defined]
        return 1
    if a.ipc_fd >= 0:
        lib.fgs_set_ipc(S, a.ipc_fd)  # type: ignore[attr-defined]
    # The client's secret for resuming the session once parked (server/park/node.py); a restored session keeps it.
    resume_key = os.environ.pop("FARGPU_RESUME_KEY", "")
    extra: dict[str, object] = {"resume_key": resume_key}
    if a.restore_dir:
        time.sleep(float(os.environ.get("FARGPU_PARK_TEST_RESTORE_PAUSE_S", "0") or 0))  # tests: a kill lands here
        occupy_for_test(os.environ.get("FARGPU_PARK_TEST_OCCUPY_VA", ""))
        t_restore = time.monotonic()
        if lib.fgs_restore(S, a.restore_dir.encode(), a.restore_pages.encode(), err, 512) != 0:  # type: ignore[attr-defined]
            reason = ffi.string(err).decode(errors="replace")
            print(f"fargpu-worker[{os.getpid()}]: cannot restore session {a.session}: {reason}", file=sys.stderr)
            status.write(f"restore-failed {reason}\n")
            sock.sendall(hello_err(f"cannot resume: the parked session could not be restored on this node: {reason}",
                                   retry=True))  # it stays parked: another node, or this one later, may take it
            lib.fgs_close(S)  # type: ignore[attr-defined]
            return 1
        extra["resumed"] = True
        extra["applied_seq"] = int(lib.fgs_applied_seq(S))  # type: ignore[attr-defined]
        status.write(f"restored {time.monotonic() - t_restore:.3f} moved_globals="
                     f"{lib.fgs_moved_globals(S)}\n")  # type: ignore[attr-defined]
        # Nothing is applied before the agent removed the parked state: until then, a worker that dies leaves the
        # session parked, and the client's next attempt restores it again.
        answer = await_consumed(a.ctl_fd, status)
        if answer != "consumed":
            print(f"fargpu-worker[{os.getpid()}]: session {a.session}: the parked state was not released "
                  f"({answer or 'no answer'}); it stays parked", file=sys.stderr)
            sock.sendall(hello_err("cannot resume: the node could not release the parked session; try again",
                                   retry=True))
            lib.fgs_close(S)  # type: ignore[attr-defined]
            return 1
    # What the device prints (printf in kernels) reaches this process's stdout through the driver: point fd 1
    # at a pipe the engine drains and forwards to the client (this worker writes its own messages to stderr).
    out_r, out_w = os.pipe()
    sys.stdout.flush()
    os.dup2(out_w, 1)
    os.close(out_w)
    if lib.fgs_set_output(S, out_r) != 0:  # type: ignore[attr-defined]
        print(f"fargpu-worker[{os.getpid()}]: device output will not be forwarded", file=sys.stderr)
    # Calls into the session from the thread below stop once the session is closed (S is freed then).
    session_lock = threading.Lock()
    session_open = [True]

    def reattach(fd: int, have: int) -> None:
        """A resuming client's new connection (server/replay/reattach.c): once the serve loop has let go of the old
        one, HELLO_OK with the batch the session applied last, and the loop goes on with this one."""
        why = ffi.new("char[]", 256)
        with session_lock:
            applied = lib.fgs_reattach_offer(S, fd, have, 10000, why, 256) if session_open[0] else -2  # type: ignore[attr-defined]
        if applied < 0:
            reason = ffi.string(why).decode(errors="replace") if session_open[0] else "the session has ended"
            with contextlib.suppress(OSError):
                os.write(fd, hello_err(f"cannot resume: {reason}", retry=applied == -2))
            os.close(fd)
            return
        sent = True
        try:
            os.write(fd, hello_ok(a.session, a.backend, a.max_frame, a.attach_key if a.attach_fd >= 0 else "",
                                  a.driver_version, {"resume_key": resume_key, "resumed": True,
                                                     "applied_seq": int(applied)}))
        except OSError:
            sent = False
        with session_lock:
            if session_open[0]:
                lib.fgs_reattach_go(S, 1 if sent else 0)  # type: ignore[attr-defined]
            else:
                os.close(fd)

    if a.attach_fd >= 0:
        attach = socket.socket(fileno=a.attach_fd)

        def receive_callback_connections() -> None:
            # The agent hands over the client's callback connection (host functions run on it), its data connections
            # (striped bulk copies) and, after a dropped connection, its new session connection ("r" + u32 have).
            while True:
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(attach, 16, 4)
                except OSError:
                    return
                if not fds:
                    return
                for fd in fds:
                    if _msg[:1] == b"r" and len(_msg) == 5:
                        os.set_blocking(fd, True)
                        reattach(fd, struct.unpack("<I", _msg[1:])[0])
                        continue
                    install = lib.fgs_add_data_fd if _msg == b"d" else lib.fgs_set_callback_fd  # type: ignore[attr-defined]
                    with session_lock:
                        installed = session_open[0] and install(S, fd) == 0
                    if not installed:
                        os.close(fd)
                        continue
                    try:  # installed: now the client may send host functions
                        os.write(fd, hello_ok(a.session, a.backend, a.max_frame))
                    except OSError:
                        continue
                    if _msg == b"d":  # and the worker may send on it unasked (bulk-delivered async copies)
                        with session_lock:
                            if session_open[0]:
                                lib.fgs_data_fd_ready(S, fd)  # type: ignore[attr-defined]

        threading.Thread(target=receive_callback_connections, daemon=True).start()
    timeline.mark("worker.hello_ok", a.session)  # before sending: once sent, the client may go on before a mark
    sock.sendall(hello_ok(a.session, a.backend, a.max_frame, a.attach_key if a.attach_fd >= 0 else "",
                          a.driver_version, extra, shm=a.shm > 0))
    if a.shm > 0 and not take_shm(sock, lib, ffi, S, a.shm):
        lib.fgs_close(S)  # type: ignore[attr-defined]
        return 1
    done = threading.Event()

    def report() -> None:
        while not done.wait(0.5):
            status.write(f"vram {lib.fgs_vram_used(S)} {lib.fgs_idle_ms(S)}\n")  # type: ignore[attr-defined]

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    reason = ffi.new("char[]", 512)
    t0 = time.monotonic()
    rc = lib.fgs_serve(S, a.fd, a.ctl_fd, reason, 512)  # type: ignore[attr-defined]
    done.set()
    with session_lock:
        session_open[0] = False
        lib.fgs_close(S)  # type: ignore[attr-defined]
    why = ffi.string(reason).decode(errors="replace")
    status.write(f"end {rc} {why}\n")
    print(f"fargpu-worker[{os.getpid()}]: session {a.session} ended after {time.monotonic() - t0:.1f}s: {why}",
          file=sys.stderr)
    sock.close()
    return 0 if rc >= 0 else 2


if __name__ == "__main__":
    sys.exit(main())
