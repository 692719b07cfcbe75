"""The node's host page pool as driver memory: one host-NUMA VMM allocation, exported as a file descriptor.

`make(driver, size)` runs this module as a short-lived process that opens the driver, allocates the pool on the
host (server/replay/hostpool.c: `cuMemCreate` on a host NUMA node, `cuMemExportToShareableHandle`), sends the
descriptor back over a socket pair and exits; the memory lives as long as a descriptor does (shown on an H100 by
bench/probe_hostmem.c). The agent holds it and hands it to every worker, which maps it once: page-out and page-in
are then single DMAs at the link's speed. The agent has no CPU view of this memory (see server/pager.py)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

MAKE_TIMEOUT_S = 180.0


class HostPoolError(OSError):
    """The driver could not make the pool (the reason says why); the node uses a memfd pool instead."""


def make(driver: str, size: int, numa: int = 0, timeout_s: float = MAKE_TIMEOUT_S) -> tuple[int, int]:
    """Returns (descriptor, length in bytes, rounded up to the driver's granularity). Raises HostPoolError."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    args = [sys.executable, "-P", "-m", "fargpu.server.host_pool_vmm", "--driver", driver, "--bytes", str(size),
            "--numa", str(numa), "--fd", "3"]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        pid = os.posix_spawn(sys.executable, args, env, file_actions=[(os.POSIX_SPAWN_DUP2, child.fileno(), 3)])
    except OSError as e:
        parent.close()
        child.close()
        raise HostPoolError(f"cannot start the process that makes the pool: {e}") from e
    child.close()
    try:
        parent.settimeout(timeout_s)
        msg, fds, _flags, _addr = socket.recv_fds(parent, 1024, 1)
    except OSError as e:
        os.kill(pid, 9)
        raise HostPoolError(f"no answer from the process that makes the pool: {e}") from e
    finally:
        parent.close()
        _reap(pid)
    words = msg.decode(errors="replace").split(" ", 1)
    if words[0] != "ok" or len(fds) != 1 or len(words) != 2 or not words[1].isdigit():
        for fd in fds:
            os.close(fd)
        raise HostPoolError(words[1] if len(words) == 2 else "the process that makes the pool ended without one")
    os.set_inheritable(fds[0], False)
    return fds[0], int(words[1])


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
    ap.add_argument("--bytes", type=int, required=True)
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
    fd = lib.fgs_host_pool_make(S, a.bytes, a.numa, length, err, 512)  # type: ignore[attr-defined]
    if fd < 0:
        sock.sendall(b"failed " + ffi.string(err))
        return 1
    socket.send_fds(sock, [f"ok {length[0]}".encode()], [fd])
    sock.close()
    os._exit(0)  # the descriptor now held by the agent keeps the memory; no teardown to wait for


if __name__ == "__main__":
    sys.exit(main())
