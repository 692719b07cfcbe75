"""The node's host page pool as driver memory: equal slabs, each a host-NUMA VMM allocation exported as a descriptor.

`make(driver, size)` runs this module as a short-lived process that opens the driver, allocates the slabs on the
host (server/replay/hostpool.c: `cuMemCreate` on a host NUMA node, `cuMemExportToShareableHandle`, one per slab),
sends their descriptors back over a socket pair in batches and exits; a slab's memory lives as long as a descriptor
does (shown on an H100 by bench/probe_hostmem.c). The agent holds them and hands them all to every worker, which
for one page-out or page-in step imports and maps just the slabs of its session's extent, each whole.

Why slabs: an H100 on driver 580 refused to map part of a host-NUMA allocation (cuMemMap at a non-zero offset, or
shorter than the allocation) with CUDA_ERROR_NOT_SUPPORTED (801), as the CUDA documentation warns ("offset
currently must be zero"), while mapping one whole pool per step cost 0.9 s for 34 GiB and left the worker holding
memory the driver's process checkpoint could not take. Slabs are `FARGPU_HOST_POOL_SLAB_MB` (default 256 MiB) or
larger where the pool would otherwise need more than MAX_SLABS. The agent has no CPU view of this memory (see
server/pager.py)."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
import time

MAKE_TIMEOUT_S = 180.0
DEFAULT_SLAB_MB = 256
MAX_SLABS = 512  # more would grow the slab instead: every worker is handed every slab's descriptor
BATCH = 200  # descriptors per message (SCM_RIGHTS takes at most 253)
ALIGN = 2 << 20
SLAB_ENV = "FARGPU_HOST_POOL_SLAB_MB"
log = logging.getLogger("fargpu.server.pager")


class HostPoolError(OSError):
    """The driver could not make the pool (the reason says why); the node uses a memfd pool instead."""


def slab_size(pool: int, slab_mb: int = 0) -> int:
    """The slab size for a pool of `pool` bytes: `slab_mb` MiB (0: FARGPU_HOST_POOL_SLAB_MB, else 256), on the 2 MiB
    granularity, grown so that the pool needs at most MAX_SLABS, and no larger than the pool. Raises HostPoolError."""
    if not slab_mb:
        text = os.environ.get(SLAB_ENV, "") or str(DEFAULT_SLAB_MB)
        if not text.isdigit() or int(text) < 1:
            raise HostPoolError(f"{SLAB_ENV}={text!r} is not a size in MiB (use a whole number, e.g. 256)")
        slab_mb = int(text)
    slab = max(slab_mb << 20, -(-pool // MAX_SLABS))
    slab = -(-slab // ALIGN) * ALIGN
    return max(ALIGN, min(slab, pool - pool % ALIGN))


def _raise_fd_limit(extra: int) -> None:
    """Room for `extra` more descriptors in this process (and the workers it starts, which inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 4 * extra + 1024)  # the agent's, the workers' (spawn.py stages them above their targets)
    if hard != resource.RLIM_INFINITY and want > hard:
        log.warning("the descriptor limit (hard %d) leaves little room beside the host pool's %d slabs: sessions may "
                    "fail to start; raise it (ulimit -Hn, LimitNOFILE= in a unit) or use larger slabs "
                    "(--host-pool-slab-mb)", hard, extra)
        want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def make(driver: str, size: int, numa: int = 0, timeout_s: float = MAKE_TIMEOUT_S,
         slab_mb: int = 0) -> tuple[list[int], int]:
    """Returns (the slabs' descriptors, each slab's length in bytes, rounded up to the driver's granularity); the
    pool is len(fds) slabs, at most `size` bytes unless one slab is more. Raises HostPoolError (nothing kept)."""
    slab = slab_size(size, slab_mb)
    count = max(1, size // slab)
    _raise_fd_limit(count)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    args = [sys.executable, "-P", "-m", "fargpu.server.host_pool_vmm", "--driver", driver, "--slab", str(slab),
            "--count", str(count), "--numa", str(numa), "--fd", "3"]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        pid = os.posix_spawn(sys.executable, args, env, file_actions=[(os.POSIX_SPAWN_DUP2, child.fileno(), 3)])
    except OSError as e:
        parent.close()
        child.close()
        raise HostPoolError(f"cannot start the process that makes the pool: {e}") from e
    child.close()
    got: list[int] = []
    try:
        length = _receive(parent, count, got, time.monotonic() + timeout_s)
    except BaseException:
        for fd in got:
            os.close(fd)
        os.kill(pid, 9)
        raise
    finally:
        parent.close()
        _reap(pid)
    for fd in got:
        os.set_inheritable(fd, False)
    return got, length


def _receive(sock: socket.socket, count: int, got: list[int], deadline: float) -> int:
    """Collects the maker's batches into `got` until "ok"; returns the slab length. Raises HostPoolError."""
    length = 0
    while True:
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            msg, fds, flags, _addr = socket.recv_fds(sock, 1024, BATCH)
        except OSError as e:
            raise HostPoolError(f"no answer from the process that makes the pool: {e}") from e
        got.extend(fds)
        words = msg.decode(errors="replace").split(" ")
        if flags & socket.MSG_CTRUNC:
            raise HostPoolError("the pool's descriptors did not all arrive (raise the open-files limit)")
        if words[0] == "slabs" and len(words) == 3 and words[1].isdigit() and words[2] == str(len(fds)):
            if length and int(words[1]) != length:
                raise HostPoolError("the driver made slabs of different sizes")
            length = int(words[1])
            continue
        if words[0] == "ok" and len(words) == 2 and words[1] == str(count) and len(got) == count and length:
            return length
        if words[0] == "failed":
            raise HostPoolError(msg.decode(errors="replace")[7:])
        raise HostPoolError("the process that makes the pool ended without it")


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="makes the node's host page pool (internal to the node agent)")
    ap.add_argument("--driver", required=True)
    ap.add_argument("--slab", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--numa", type=int, default=0)
    ap.add_argument("--fd", type=int, required=True)
    a = ap.parse_args(argv)
    from .worker import _load

    sock = socket.socket(fileno=a.fd)
    ffi, lib = _load()
    err = ffi.new("char[]", 512)
    S = lib.fgs_open(a.driver.encode(), 0, 0, err, 512)  # type: ignore[attr-defined]
    if S == ffi.NULL:
        sock.sendall(b"failed cannot open the driver: " + ffi.string(err))
        return 1
    length = ffi.new("unsigned long long *")
    batch: list[int] = []
    for i in range(a.count):
        fd = lib.fgs_host_pool_make(S, a.slab, a.numa, length, err, 512)  # type: ignore[attr-defined]
        if fd < 0:
            sock.sendall(f"failed slab {i + 1} of {a.count}: ".encode() + ffi.string(err))
            return 1
        batch.append(fd)
        if len(batch) == BATCH or i == a.count - 1:
            socket.send_fds(sock, [f"slabs {length[0]} {len(batch)}".encode()], batch)
            for b in batch:
                os.close(b)  # the agent's copy keeps the memory
            batch = []
    sock.sendall(f"ok {a.count}".encode())
    sock.close()
    os._exit(0)  # the descriptors now held by the agent keep the memory; no teardown to wait for


if __name__ == "__main__":
    sys.exit(main())
