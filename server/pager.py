"""The node agent's half of paging: where paged sessions' memory goes, and who gives way when the GPU is full.

- The host page pool: pinned host memory the node shares with every worker: host-NUMA driver memory on a real
  GPU, as equal slabs (server/host_pool_vmm.py; for each step a worker maps its extent's slabs, each whole, and
  pages by DMA; the driver maps no part of a host-NUMA allocation), else one memfd (mapped by each worker,
  registered with the driver for each copy). The agent hands out extents of it (whole slabs), first fit, and frees
  an extent when its session pages in or its worker exits. When no extent is free the session spills to a file in
  the spill directory instead; the agent deletes that file when the session pages in or exits, so nothing
  outlives a killed worker. It deletes it off the page-in's path and off the event loop (`SpillDeleter`): on a
  filesystem mounted with online discard, unlinking a spilled file costs about 0.13 s per GiB.
- The resident ledger: what may be resident on the GPU at once (the node's capacity). Workers charge it as they
  allocate and page in (server/replay/paging.c); when it is full a worker says "need BYTES" and the agent pages
  out the least recently used idle sessions that their lease's QoS allows (never `guaranteed`; `best_effort`
  before `standard`), then answers "grant", or "deny" when nothing can give way. It never kills a session.
- Each session's paging state, as the pool sees it: resident, paging-out, paged-host, paged-disk, paging-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fargpu import timeline

from .checkpoint import CheckpointError, ProcessCheckpoint, ProtocolTestCheckpoint
from .lease_ledger import LeaseLedger

log = logging.getLogger("fargpu.server.pager")
ALIGN = 2 << 20
POOL_READY_WAIT_S = 60.0  # a page-out to host waits this long for the pool's pages to be allocated
STEP_TIMEOUT_S = 300.0  # a page-out or page-in that takes longer is reported failed (the worker goes on)


@dataclass
class PageState:
    """One session's paging state (the agent's view, from its worker's status lines)."""

    state: str = "resident"  # resident | paging-out | paged-host | paged-disk | paging-in
    paged_bytes: int = 0
    unpageable_bytes: int = 0
    idle_ms: int = 0
    qos: str = "standard"
    idle_timeout_s: float | None = None
    waiting_for_room: bool = False
    extent: tuple[int, int] | None = None
    spill: Path | None = None
    last_pageout_s: float = 0.0
    last_pagein_s: float = 0.0
    last_attempt: float = 0.0  # monotonic time of the idle policy's last page-out attempt
    paged_at: float = 0.0  # monotonic time its last page-out finished
    has_pool: bool = True  # its worker was given the host pool (one that starts before a driver pool is ready is not)
    deep: bool = False  # its worker's CUDA state is in a driver process checkpoint (server/checkpoint.py)
    deep_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: list[asyncio.Future[str]] = field(default_factory=list)


class HostPool:
    """First-fit extents of one memfd (sparse: pages cost memory only once written; `fd`), or of host-NUMA driver
    memory made by `maker` (server/host_pool_vmm.py) in the background as equal slabs (`fds`, `slab` bytes each;
    `fd` stays -1), whose extents are whole slabs: the driver maps a host-NUMA allocation only whole. Driver memory
    is the fast kind (a page-out is one DMA) but has no CPU view here (`cpu_view` False); where the driver cannot
    make it, the pool is a memfd, with the reason logged. Until a driver pool is ready `fds` is empty (`usable`
    False): sessions that start before then have no host pool and page out to disk."""

    def __init__(self, size: int, prefault: bool = False,
                 maker: Callable[[int], tuple[list[int], int]] | None = None) -> None:
        self.size = size - size % ALIGN
        self.kind = "vmm" if maker is not None and self.size else "memfd"
        self.fd = -1
        self.fds: list[int] = []  # the vmm kind's slabs, in pool order
        self.slab = 0
        self._free: list[tuple[int, int]] = [(0, self.size)] if self.size else []
        if self.size and maker is None:
            self._open_memfd()
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once the pool's pages are all allocated (at once without prefault)
        self._prefaulter: threading.Thread | None = None
        if maker is not None and self.size:
            self._prefaulter = threading.Thread(target=self._make, args=(maker, prefault),
                                                name="fargpu-page-pool-make", daemon=True)
            self._prefaulter.start()
        elif prefault and self.fd >= 0:
            # Allocate the pool's pages now, in the background: a page-out that first had to fault in and zero
            # fresh pages while the driver pins them ran at 3 GB/s on an H100 (bench/results/paging_gpu-*).
            self._prefaulter = threading.Thread(target=self._prefault, name="fargpu-page-pool-prefault", daemon=True)
            self._prefaulter.start()
        else:
            self._set_ready()

    def _set_ready(self) -> None:
        self.ready.set()
        timeline.mark("node.host_pool_ready", f"{self.kind} {self.size >> 20}MiB")

    @property
    def cpu_view(self) -> bool:
        """Whether the agent can read and write the pool's pages through `fd` (a memfd can; driver memory not)."""
        return self.kind == "memfd"

    @property
    def usable(self) -> bool:
        """Whether there is a pool to hand to a worker yet (a memfd, or the driver's slabs)."""
        return self.fd >= 0 or bool(self.fds)

    def _open_memfd(self) -> None:
        self.fd = os.memfd_create("fargpu-page-pool", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)

    def _make(self, maker: Callable[[int], tuple[list[int], int]], prefault: bool) -> None:
        t = time.monotonic()
        try:
            fds, slab = maker(self.size)
            if not fds or slab <= 0 or slab % ALIGN:
                for fd in fds:
                    os.close(fd)
                raise OSError(f"the driver made {len(fds)} slabs of {slab} bytes (want some, on 2 MiB)")
        except OSError as e:
            log.warning("the host page pool is a memfd (slower page-out): the driver could not make it: %s", e)
            self.kind = "memfd"
            self._open_memfd()
            if prefault:
                self._prefault()
            else:
                self._set_ready()
            return
        if self._stop.is_set():
            for fd in fds:
                os.close(fd)
            return
        # Extents are handed out only once ready is set: the free list can change under no one here.
        self.size = slab * len(fds)
        self._free = [(0, self.size)]
        self.slab = slab
        self.fds = fds
        log.info("host page pool: %d MiB of pinned host memory from the driver (%d slabs of %d MiB), in %.1f s",
                 self.size >> 20, len(fds), slab >> 20, time.monotonic() - t)
        self._set_ready()

    def _prefault(self) -> None:
        # Written, not just fallocated: a fallocated shmem page is still cleared on its first write. Through a
        # mapping advised for huge pages: where the kernel gives shared memory huge pages on advice
        # (transparent_hugepage/shmem_enabled = advise), the pool is made of 2 MiB pages, and a worker maps its
        # extent with 512 times fewer page-table entries.
        # 8 MiB at a time: a copy into the mapping holds the GIL, and 64 MiB stalled the node's event loop (its
        # registration, a new session's handshake) for up to 90 ms per copy on a 2-core machine (8 MiB: 15 ms), at
        # the same overall speed.
        zeros = bytes(8 << 20)
        try:
            with mmap.mmap(self.fd, self.size) as m:
                if hasattr(mmap, "MADV_HUGEPAGE"):
                    try:
                        m.madvise(mmap.MADV_HUGEPAGE)
                    except OSError:
                        pass
                for off in range(0, self.size, len(zeros)):
                    if self._stop.is_set():
                        return
                    n = min(len(zeros), self.size - off)
                    m[off : off + n] = zeros[:n]
        except OSError as e:
            log.warning("could not allocate the host page pool up front (%s); pages come as sessions page out", e)
        self._set_ready()

    def take(self, n: int) -> tuple[int, int] | None:
        unit = self.slab or ALIGN  # whole slabs of driver memory (every free range starts on one)
        n = max(unit, -(-n // unit) * unit)
        for i, (off, length) in enumerate(self._free):
            if length >= n:
                self._free[i] = (off + n, length - n)
                if self._free[i][1] == 0:
                    del self._free[i]
                return off, n
        return None

    def give(self, extent: tuple[int, int]) -> None:
        off, n = extent  # its pages stay with the pool, for the next page-out
        self._free.append((off, n))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for o, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((o, length))
        self._free = merged

    @property
    def free_bytes(self) -> int:
        return sum(n for _, n in self._free)

    def close(self) -> None:
        self._stop.set()
        if self._prefaulter is not None:
            self._prefaulter.join()  # it writes to self.fd: the descriptor must not be reused under it
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


class SpillDeleter:
    """Deletes spill files on a thread of its own. A file is first renamed (at once) to a name that ends in
    `.deleting-N.pages`, so the session may page out to its own spill path again right away; the unlink, which on a
    filesystem mounted with online discard (ext4 `-o discard`) costs about 0.13 s per GiB, runs on the thread. Such
    names left by an agent that died mid-delete are removed when the next one starts. `close` waits for what is
    queued, bounded, so a node that stops leaves no spill file."""

    MARK = ".deleting-"

    def __init__(self, spill_dir: Path) -> None:
        self._ids = itertools.count()
        self._queue: list[Path] = []
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        with contextlib.suppress(OSError):
            if spill_dir.is_dir():
                self._queue.extend(p for p in spill_dir.iterdir() if self.MARK in p.name and p.suffix == ".pages")
        self._thread = threading.Thread(target=self._run, name="fargpu-spill-delete", daemon=True)
        self._thread.start()

    def delete(self, path: Path) -> None:
        trash = path.with_name(f"{path.stem}{self.MARK}{os.getpid()}-{next(self._ids)}.pages")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        except OSError as e:  # renaming refused: delete it where it is (the caller's next page-out may wait for it)
            log.warning("could not rename the spill file %s before deleting it: %s", path, e)
            trash = path
        with self._cv:
            self._queue.append(trash)
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                path = self._queue.pop(0)
                self._busy = True
            t = time.monotonic()
            try:
                size = path.stat().st_size
                path.unlink()
                log.debug("deleted the spill file %s (%d MiB) in %.3f s", path, size >> 20, time.monotonic() - t)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not delete the spill file %s: %s", path, e)
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def idle(self, timeout: float) -> bool:
        """Waits until nothing is queued or being deleted; True when so."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 120.0) -> None:
        self.idle(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(1.0)


QOS_ORDER = {"best_effort": 0, "standard": 1}  # who gives way first; guaranteed never does


class Pager:
    def __init__(self, resident_limit: int, host_pool_bytes: int, spill_dir: Path, slots: int = 1024,
                 prefault: bool = False, pool_maker: Callable[[int], tuple[list[int], int]] | None = None) -> None:
        self.resident = LeaseLedger.create("node-resident", resident_limit, slots)
        self.pool = HostPool(host_pool_bytes, prefault, pool_maker)
        self.spill_dir = spill_dir
        self.spill_deleter = SpillDeleter(spill_dir)
        self.states: dict[str, PageState] = {}
        self._room_lock = asyncio.Lock()
        self.pageouts = 0
        self.pageins = 0
        # Told of every finished step: (kind "pageout"|"pagein", where "host"|"disk", bytes, seconds) — metrics.
        self.observer: Callable[[str, str, int, float], None] | None = None
        # What a paged session still holds on the GPU, by its worker's pid (NVML on a real GPU; None: unknown).
        self.measure_held: Callable[[int], int | None] | None = None
        # The deeper level (the driver's process checkpoint), opened on first use by `open_checkpoint`; None:
        # not on this node, for the reason given.
        self.open_checkpoint: Callable[[], tuple[ProcessCheckpoint | None, str]] | None = None
        self.checkpoint: ProcessCheckpoint | ProtocolTestCheckpoint | None = None
        self.no_deep_reason = "the simulated device has no driver process checkpoint"
        self.deep_outs = 0

    # ---- bookkeeping ----
    def admit(self, sid: str, qos: str, idle_timeout_s: float | None) -> int:
        self.states[sid] = PageState(qos=qos, idle_timeout_s=idle_timeout_s)
        return self.resident.admit(sid)

    def forget(self, sid: str) -> None:
        """The session's worker has exited: its extent, spill file and resident charge go."""
        st = self.states.pop(sid, None)
        self.resident.release(sid)
        if st is None:
            return
        if st.extent is not None:
            self.pool.give(st.extent)
        if self.pool.size:
            log.info("session %s gone: host page pool %d of %d MiB free", sid, self.pool.free_bytes >> 20,
                     self.pool.size >> 20)
        if st.spill is not None:
            self.spill_deleter.delete(st.spill)
        for w in st.waiters:
            if not w.done():
                w.set_result("failed the session ended")

    def resident_bytes(self, sid: str) -> int:
        return self.resident.charged(sid)

    def on_status(self, sid: str, line: str) -> None:
        """A status line from the worker about paging."""
        st = self.states.get(sid)
        if st is None:
            return
        word, _, rest = line.partition(" ")
        parts = rest.split()
        if word == "paged" and len(parts) >= 3:
            st.state = "paged-host" if parts[0] == "host" else "paged-disk"
            st.paged_bytes = int(parts[1])
            st.last_pageout_s = int(parts[2]) / 1e9
            st.paged_at = time.monotonic()
            st.unpageable_bytes = int(parts[3]) if len(parts) > 3 else 0
            if parts[0] != "host" and st.extent is not None:
                self.pool.give(st.extent)
                st.extent = None
            self.pageouts += 1
            if self.observer is not None:
                self.observer("pageout", parts[0], st.paged_bytes, st.last_pageout_s)
            self._wake(st, "paged " + rest)
        elif word == "pageout-failed":
            st.state = "resident"
            self._release_store(st)
            self._wake(st, "failed " + rest)
        elif word == "resident" and parts:
            where = "host" if st.extent is not None else "disk"
            st.state = "resident"
            st.paged_bytes = 0
            st.last_pagein_s = int(parts[1]) / 1e9 if len(parts) > 1 else 0.0
            self._release_store(st)
            self.pageins += 1
            log.info("session %s is resident again from %s: %s", sid, where, rest)
            if self.observer is not None:
                self.observer("pagein", where, int(parts[0]), st.last_pagein_s)
            self._wake(st, "resident " + rest)
        elif word == "paging-in":
            st.state = "paging-in"
            log.info("paging in session %s (%s bytes)", sid, rest)
        elif word in ("deep-ok", "deep-failed"):
            self._wake(st, word + (" " + rest if rest else ""))
        elif word == "pagein-failed":
            st.state = "paged-host" if st.extent is not None else "paged-disk"
            log.warning("page-in of session %s failed, it stays paged: %s", sid, rest)
            self._wake(st, "failed " + rest)

    def _release_store(self, st: PageState) -> None:
        if st.extent is not None:
            self.pool.give(st.extent)
            st.extent = None
        if st.spill is not None:
            self.spill_deleter.delete(st.spill)
            st.spill = None

    @staticmethod
    def _wake(st: PageState, what: str) -> None:
        for w in st.waiters:
            if not w.done():
                w.set_result(what)
        st.waiters.clear()

    async def _await_result(self, st: PageState) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        st.waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, STEP_TIMEOUT_S)
        except TimeoutError:
            return "failed no answer from the worker in time"

    # ---- actions ----
    async def page_out(self, sid: str, ctl_w: int, to: str = "auto", pid: int = 0) -> str:
        """Pages a session out; returns "paged ..." or "failed REASON". `to="deep"`: to the host pool (or disk),
        then the driver's process checkpoint takes the rest (context, module code, globals)."""
        st = self.states.get(sid)
        if st is None:
            return "failed no such session"
        if to == "deep":
            if self.checkpoint is None and self.open_checkpoint is not None:
                self.checkpoint, self.no_deep_reason = await asyncio.to_thread(self.open_checkpoint)
                self.open_checkpoint = None
            if self.checkpoint is None or not pid:
                return f"failed no deeper level here: {self.no_deep_reason}"
            res = (await self.page_out(sid, ctl_w, "auto", pid) if st.state == "resident"
                   else f"paged {st.state.removeprefix('paged-')} {st.paged_bytes}")
            if not res.startswith("paged"):
                return res
            return await self._go_deep(sid, st, ctl_w, pid, res)
        if st.state != "resident":
            return f"failed the session is {st.state}"
        need = self.resident_bytes(sid)
        cmd = ""
        if to == "host" and need and not st.has_pool:
            return ("failed this session started before the node's host page pool was ready and pages out to disk; "
                    "page out to disk")
        if to == "host" and need and not self.pool.ready.is_set():
            # The pool's pages are still being allocated (written with zeros, front to back): an extent must not
            # take data before that is done.
            await asyncio.to_thread(self.pool.ready.wait, POOL_READY_WAIT_S)
            if not self.pool.ready.is_set():
                return "failed the node's host page pool is still being set up; try again, or page out to disk"
        if (to in ("auto", "host") and need and st.has_pool and self.pool.ready.is_set()
                and (ext := self.pool.take(need)) is not None):
            st.extent = ext
            cmd = f"pageout host {ext[0]} {ext[1]}\n"
        elif to == "host" and need:
            return "failed the node's host page pool has no room; page out to disk instead"
        if not cmd:
            try:
                self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                return f"failed cannot use the spill directory {self.spill_dir}: {e.strerror or e}"
            st.spill = self.spill_dir / f"{sid}.pages"
            cmd = f"pageout disk {st.spill}\n"
        st.state = "paging-out"
        log.info("paging out session %s (%d bytes resident) to %s", sid, need, cmd.split()[1])
        try:
            os.write(ctl_w, cmd.encode())
        except OSError as e:
            st.state = "resident"
            self._release_store(st)
            return f"failed the worker is gone ({e})"
        res = await self._await_result(st)
        if (to == "auto" and cmd.startswith("pageout host") and st.state == "resident"
                and res.startswith(("failed cannot map the node's host page pool", "failed cannot map the host pool"))):
            # The pool itself failed, not the session: the session pages to disk instead of staying resident (the
            # policy would retry the pool for ever, and the GPU memory would never be given back).
            log.warning("session %s: the host page pool failed (%s); paging it to disk instead", sid,
                        res.removeprefix("failed "))
            return await self.page_out(sid, ctl_w, "disk", pid)
        if res.startswith("paged") and pid and self.measure_held is not None:
            # What the VMM route could not free, measured: the worker's context, module code and globals.
            held = await asyncio.to_thread(self.measure_held, pid)
            if held is not None:
                st.unpageable_bytes = held
                res += f" held_on_gpu={held}"
        return res

    async def _go_deep(self, sid: str, st: PageState, ctl_w: int, pid: int, res: str) -> str:
        ck = self.checkpoint
        assert ck is not None
        async with st.deep_lock:
            if st.deep:
                return res + " deep"
            if st.state not in ("paged-host", "paged-disk"):
                return f"failed the session is {st.state}"
            try:
                os.write(ctl_w, b"deep\n")
            except OSError as e:
                return f"failed the worker is gone ({e})"
            ans = await self._await_result(st)
            if not ans.startswith("deep-ok"):
                return f"failed the worker refused the deeper level: {ans}"
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(ck.checkpoint, pid)
            except CheckpointError as e:
                # The worker asks before its next CUDA call and is told at once that nothing needs restoring.
                log.warning("driver checkpoint of session %s failed: %s", sid, e)
                return f"{res} deep-failed {e}"
            st.deep = True
            self.deep_outs += 1
            res += f" deep checkpoint_s={time.monotonic() - t0:.3f}"
        if self.measure_held is not None:
            held = await asyncio.to_thread(self.measure_held, pid)
            if held is not None:
                st.unpageable_bytes = held
                res += f" held_on_gpu_after_checkpoint={held}"
        log.info("session %s went to the deeper level: %s", sid, res)
        return res

    async def wake(self, sid: str, pid: int) -> str:
        """The worker of a deep session needs CUDA again: restore its driver checkpoint. "" or a reason."""
        st = self.states.get(sid)
        if st is None:
            return ""
        async with st.deep_lock:
            if not st.deep:
                return ""
            ck = self.checkpoint
            assert ck is not None
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(ck.restore, pid)
            except CheckpointError as e:
                log.error("restoring the driver checkpoint of session %s failed: %s", sid, e)
                return str(e)
            st.deep = False
            log.info("restored the driver checkpoint of session %s in %.3f s", sid, time.monotonic() - t0)
            return ""

    async def page_in(self, sid: str, ctl_w: int) -> str:
        st = self.states.get(sid)
        if st is None:
            return "failed no such session"
        if st.state not in ("paged-host", "paged-disk"):
            return f"failed the session is {st.state}"
        st.state = "paging-in"
        try:
            os.write(ctl_w, b"pagein\n")
        except OSError as e:
            return f"failed the worker is gone ({e})"
        return await self._await_result(st)

    async def make_room(self, sid: str, need: int, ctl: dict[str, int], pids: dict[str, int] | None = None) -> bool:
        """Pages out idle sessions, least recently used first, until `need` bytes fit; True when they do."""
        pids = pids or {}
        st = self.states.get(sid)
        if st is not None:
            st.waiting_for_room = True
        try:
            async with self._room_lock:
                for _ in range(64):
                    if self.resident.quota == 0 or self.resident.total() + need <= self.resident.quota:
                        return True
                    victims = sorted(
                        (v for v, s in self.states.items()
                         if v != sid and s.state == "resident" and not s.waiting_for_room
                         and s.qos in QOS_ORDER and self.resident_bytes(v) > 0 and v in ctl),
                        key=lambda v: (QOS_ORDER[self.states[v].qos], -self.states[v].idle_ms),
                    )
                    if not victims:
                        return False
                    victim = victims[0]
                    res = await self.page_out(victim, ctl[victim], pid=pids.get(victim, 0))
                    log.info("made room for session %s: paged out session %s: %s", sid, victim, res)
                return False
        finally:
            if st is not None:
                st.waiting_for_room = False

    def close(self) -> None:
        self.spill_deleter.close()
        self.pool.close()
        self.resident.close()
