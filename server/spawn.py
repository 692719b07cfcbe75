"""Starting session workers without fork(): `posix_spawn` plus a pidfd to await the exit.

Why not asyncio's subprocess: on uvloop it forks (libuv's uv_spawn calls fork()), and fork() runs every
pthread_atfork handler in the child. gRPC's C core registers such handlers when its fork support is on (the
default of grpcio's build unless GRPC_ENABLE_FORK_SUPPORT is false when grpc is first imported), and its
post-fork child handler restarts gRPC's threads in the child. With the pool link's gRPC threads busy in the
parent, a restarted thread in the child touches state copied mid-operation and faults while the child is still
between fork and exec: the worker "exits -11" about a millisecond after it started (a core of such a child
shows its main thread in libuv's execvp and a gRPC thread faulting beside it). glibc's posix_spawn starts the
child with clone(CLONE_VM | CLONE_VFORK) and runs no atfork handlers, so nothing of the parent's threads runs
in the child, whatever libraries the parent has loaded.

The child gets exactly the descriptors in `fds` (child fd number -> parent fd, duplicated with dup2 in the
child) besides stdio: every other descriptor of the server is made close-on-exec before the spawn.

`stable_va` starts the child without address-space randomisation (server/worker.py says why workers want it):
the spawning thread's personality carries ADDR_NO_RANDOMIZE across the spawn only (a personality is a thread's
own and the child inherits it at exec), so the worker need not execute itself a second time to get it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator

ADDR_NO_RANDOMIZE = 0x0040000  # personality(2)
_QUERY = 0xFFFFFFFF


class SpawnedProcess:
    """A child started by `spawn`: its pid, a way to signal it, and an awaitable exit status (negative: the
    signal that killed it, as asyncio reports it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._pidfd, self._reap)
        self._reap()  # it may have exited already

    def _reap(self) -> None:
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a foreign SIGCHLD handler): the status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self.returncode = os.waitstatus_to_exitcode(status)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self._done.done():
            self._done.set_result(self.returncode)

    async def wait(self) -> int:
        return int(await asyncio.shield(self._done))

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _close_on_exec_all() -> None:
    """Marks every descriptor above stdio close-on-exec: Python opens its own so, but a descriptor the server
    inherited (or a library opened plainly) would otherwise reach every worker."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


@contextlib.contextmanager
def _no_randomisation(on: bool) -> Iterator[None]:
    """This thread's personality with ADDR_NO_RANDOMIZE while the block runs (nothing when off, or where the
    kernel refuses: the worker then tries again itself and says so)."""
    libc = ctypes.CDLL(None, use_errno=True) if on else None
    before = libc.personality(_QUERY) if libc is not None else -1
    changed = before != -1 and not before & ADDR_NO_RANDOMIZE and libc is not None
    if changed and libc is not None and libc.personality(before | ADDR_NO_RANDOMIZE) == -1:
        changed = False
    try:
        yield
    finally:
        if changed and libc is not None:
            libc.personality(before)


def spawn(args: list[str], fds: dict[int, int], env: dict[str, str], stable_va: bool = False) -> SpawnedProcess:
    """Starts `args` with `fds` mapped into the child (child fd -> parent fd) and `env`, from the running event
    loop (which awaits the exit), without address-space randomisation when `stable_va`. The parent waits only
    until the child has exec'ed. Raises OSError."""
    if any(child < 3 for child in fds):
        raise ValueError("child descriptors 0-2 are the server's own stdio; map session fds to 3 and up")
    # dup2 onto a descriptor that is also a source would clobber it: stage every source above the targets.
    top = max([2, *fds, *fds.values()]) + 1
    actions: list[tuple[int, ...]] = []
    staged: list[int] = []
    for i, parent_fd in enumerate(fds.values()):
        actions.append((os.POSIX_SPAWN_DUP2, parent_fd, top + i))
        staged.append(top + i)
    for (child_fd, _parent), tmp in zip(fds.items(), staged, strict=True):
        actions.append((os.POSIX_SPAWN_DUP2, tmp, child_fd))
    for tmp in staged:
        actions.append((os.POSIX_SPAWN_CLOSE, tmp))
    _close_on_exec_all()
    with _no_randomisation(stable_va):
        pid = os.posix_spawn(args[0], args, env, file_actions=actions)
    return SpawnedProcess(pid)
