"""The node agent's side of a lease's VRAM ledger: one shared memfd per lease on this node, one slot per session.

Every session of a lease runs in its own worker; the lease's quota covers them all. The agent creates the
ledger when the lease's first session arrives, hands each worker the descriptor and a free slot, and zeroes the
slot once the worker has been reaped (a killed worker leaves no charge behind). Workers charge and check under a
record lock (server/replay/ledger.c, which also gives the layout). The number of sessions a lease may hold at once
is bounded here too (the pool's `max_sessions_per_lease`, or the node's default)."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

MAGIC = 0x444C4746  # "FGLD"
VERSION = 1
HEADER = 64
SLOT = 64


def slot_size(devices: int) -> int:
    """Bytes of one slot: a u64 counter per GPU of the lease (one for all when `devices` is 0), in 64-byte units."""
    return SLOT * ((max(devices, 1) + 7) // 8)


class TooManySessions(Exception):
    """The lease already holds as many sessions on this node as it may; the message is safe to show the client."""


@dataclass
class LeaseLedger:
    lease_id: str
    quota: int
    slots: int
    fd: int
    mem: mmap.mmap
    sessions: dict[str, int] = field(default_factory=dict)  # session id -> slot
    devices: int = 0  # GPUs of the lease on this node, each with its own counter and the quota per GPU; 0: one

    @classmethod
    def create(cls, lease_id: str, quota: int, slots: int, devices: int = 0) -> LeaseLedger:
        """`devices` > 0: the quota is per GPU, and a session's GPU ordinal d charges counter d (ledger.c)."""
        if not 0 <= devices <= 64:
            raise ValueError("a lease has at most 64 GPUs on one node")
        fd = os.memfd_create(f"fargpu-ledger-{lease_id}", os.MFD_CLOEXEC)
        size = HEADER + slot_size(devices) * slots
        os.ftruncate(fd, size)
        mem = mmap.mmap(fd, size)
        struct.pack_into("<IIIIQ", mem, 0, MAGIC, VERSION, slots, devices, quota)
        return cls(lease_id, quota, slots, fd, mem, devices=devices)

    def _counter(self, slot: int, dev: int = 0) -> int:
        return HEADER + slot_size(self.devices) * slot + 8 * dev

    def _clear(self, slot: int) -> None:
        for d in range(max(self.devices, 1)):
            struct.pack_into("<Q", self.mem, self._counter(slot, d), 0)

    def admit(self, session_id: str) -> int:
        """Books a slot for a new session of the lease; raises TooManySessions when every slot is taken."""
        if len(self.sessions) >= self.slots:
            raise TooManySessions(
                f"lease {self.lease_id} already has {len(self.sessions)} session(s) on this node, its limit; "
                "end one of them first"
            )
        taken = set(self.sessions.values())
        slot = next(i for i in range(self.slots) if i not in taken)
        self._clear(slot)
        self.sessions[session_id] = slot
        return slot

    def charged(self, session_id: str) -> int:
        """What the session has charged, on all its GPUs together."""
        slot = self.sessions.get(session_id)
        if slot is None:
            return 0
        return sum(int(struct.unpack_from("<Q", self.mem, self._counter(slot, d))[0])
                   for d in range(max(self.devices, 1)))

    def charged_per_gpu(self, dev: int) -> int:
        """What the lease's sessions together have charged on GPU ordinal `dev` (counter 0 when not per GPU)."""
        return sum(int(struct.unpack_from("<Q", self.mem, self._counter(i, dev))[0]) for i in range(self.slots))

    def total(self) -> int:
        return sum(self.charged_per_gpu(d) for d in range(max(self.devices, 1)))

    def release(self, session_id: str) -> None:
        """The session's worker has exited and been reaped: its slot's charge goes and the slot is free again."""
        slot = self.sessions.pop(session_id, None)
        if slot is not None:
            self._clear(slot)

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


class LedgerBook:
    """The ledgers of the leases with sessions on this node."""

    def __init__(self, default_max_sessions: int = 16) -> None:
        if default_max_sessions < 1:
            raise ValueError("a lease must be allowed at least one session")
        self.default_max_sessions = default_max_sessions
        self._ledgers: dict[str, LeaseLedger] = {}

    def admit(self, lease_id: str, session_id: str, quota: int, max_sessions: int | None,
              devices: int = 0) -> tuple[LeaseLedger, int]:
        """`devices` > 0: the lease has that many GPUs here and `quota` is per GPU (else for all together)."""
        ledger = self._ledgers.get(lease_id)
        if ledger is None:
            ledger = LeaseLedger.create(lease_id, quota, max(1, min(max_sessions or self.default_max_sessions, 4096)),
                                        devices)
            self._ledgers[lease_id] = ledger
        return ledger, ledger.admit(session_id)

    def release(self, lease_id: str, session_id: str) -> None:
        ledger = self._ledgers.get(lease_id)
        if ledger is None:
            return
        ledger.release(session_id)
        if not ledger.sessions:
            del self._ledgers[lease_id]
            ledger.close()

    def get(self, lease_id: str) -> LeaseLedger | None:
        return self._ledgers.get(lease_id)
