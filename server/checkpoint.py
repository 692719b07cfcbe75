"""The driver's process checkpoint (cuCheckpointProcess*), called by the node agent on a worker's pid.

The deeper paging level: after the VMM route has paged a session's allocations out, the agent locks the worker's
CUDA state and checkpoints it, which releases what the VMM route cannot (the context, module code and globals).
The worker makes no CUDA call until it has asked the agent to restore it ("wake", server/replay/paging.c).
Only on a real GPU: the simulated device has no process checkpoint, and `available()` says so.
"""

from __future__ import annotations

import ctypes
import os
import threading


class CheckpointError(RuntimeError):
    pass


class ProcessCheckpoint:
    """cuCheckpointProcessLock/Checkpoint/Restore/Unlock on other processes, from this one."""

    def __init__(self, libcuda: str = "libcuda.so.1") -> None:
        self._cu = ctypes.CDLL(libcuda)
        for name in ("cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint", "cuCheckpointProcessRestore",
                     "cuCheckpointProcessUnlock"):
            fn = getattr(self._cu, name, None)
            if fn is None:
                raise CheckpointError(f"the driver has no {name} (it needs driver 570 or newer)")
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p]
            fn.restype = ctypes.c_int
        rc = self._cu.cuInit(0)
        if rc != 0:
            raise CheckpointError(f"cuInit failed with CUDA error {rc}")
        self._mu = threading.Lock()

    def _call(self, name: str, pid: int) -> None:
        rc = getattr(self._cu, name)(pid, None)
        if rc != 0:
            raise CheckpointError(f"{name} of pid {pid} failed with CUDA error {rc}")

    def checkpoint(self, pid: int) -> None:
        """Locks the process's CUDA state and moves it off the GPU; on failure the process is left unlocked."""
        with self._mu:
            self._call("cuCheckpointProcessLock", pid)
            try:
                self._call("cuCheckpointProcessCheckpoint", pid)
            except CheckpointError:
                self._cu.cuCheckpointProcessUnlock(pid, None)
                raise

    def restore(self, pid: int) -> None:
        """Brings the process's CUDA state back onto the GPU and unlocks it."""
        with self._mu:
            self._call("cuCheckpointProcessRestore", pid)
            self._call("cuCheckpointProcessUnlock", pid)


def open_checkpoint(libcuda: str) -> tuple[ProcessCheckpoint | None, str]:
    """The checkpoint API of the node's real driver, or None and why not."""
    try:
        return ProcessCheckpoint(libcuda), ""
    except (OSError, CheckpointError) as e:
        return None, str(e)


class ProtocolTestCheckpoint:
    """A test double for the simulated device (FARGPU_TEST_FAKE_CHECKPOINT=1): checkpoint and restore do nothing,
    so tests prove the agent↔worker protocol around them (no CUDA call before the agent restores; a session closes
    cleanly from the deeper level), never that any memory left a GPU. `FARGPU_TEST_FAKE_CHECKPOINT=fail-once`
    makes the first restore fail."""

    def __init__(self, mode: str) -> None:
        self.fail_next_restore = mode == "fail-once"
        self.calls: list[tuple[str, int]] = []

    def checkpoint(self, pid: int) -> None:
        self.calls.append(("checkpoint", pid))

    def restore(self, pid: int) -> None:
        self.calls.append(("restore", pid))
        if self.fail_next_restore:
            self.fail_next_restore = False
            raise CheckpointError(f"cuCheckpointProcessRestore of pid {pid} failed (test double, as asked)")


def test_double_from_env() -> ProtocolTestCheckpoint | None:
    mode = os.environ.get("FARGPU_TEST_FAKE_CHECKPOINT", "")
    return ProtocolTestCheckpoint(mode) if mode else None
