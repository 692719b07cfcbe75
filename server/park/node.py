"""The node agent's half of parking: storing a paged-out session's state in the park store, and fetching a parked
session back for a worker that restores it (server/replay/park.c does the worker's half).

Layout in the store: `sessions/<id>/state` (the worker's journal, allocation table and globals), `sessions/<id>/
memory` (the paged memory, exactly as the page store holds it), `images/<sha256>` (module and library images,
shared by every session that loads them, stored once), and `sessions/<id>/session.json`, written last: a park is
complete, and may be restored, only once that descriptor is confirmed. It names the lease, the GPU model and
driver the session ran on (a restore needs the same), and the SHA-256 of the session's resume key, which only its
client knows. Restoring deletes the descriptor first, then the rest: a session's state is restored at most once,
so a stale copy can never come back after the session went on elsewhere.

Park steps (Parker.park): page out if resident; "park DIR" to the worker, which writes DIR/state and DIR/img-*
and answers "park-ready" (or "park-failed REASON": an unparkable session stays paged, and the reason is kept for
the pool); upload everything; then "park-commit", and the worker ends the session ("parked") and exits. Any
failure after the upload began deletes what was stored and answers "park-abort": the session stays paged here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import ParkStore, ParkStoreError

log = logging.getLogger("fargpu.server.park")
STEP_TIMEOUT_S = 600.0
PARKED_SHOWN_S = 300.0  # how long a parked session is still reported (state "parked") after its worker is gone
DESCRIPTOR = "session.json"
MARKER = "parking"  # written first by a park, removed once its descriptor is: {"started": unix time}
SESSION_OBJECTS = (DESCRIPTOR, "state", "memory", MARKER)


def orphan_age_s() -> float:
    """How old a park's marker must be (and the node-local work directories of parks and restores) before a sweep
    takes it for the leftover of a node that died mid-park: longer than any upload takes."""
    return float(os.environ.get("FARGPU_PARK_ORPHAN_AGE_S", "") or 3600.0)


def open_store(spec: str | None) -> ParkStore | None:
    """A park store from its description: a directory path (or "dir:PATH"), "s3://BUCKET/PREFIX" (endpoint from
    FARGPU_PARK_S3_ENDPOINT, credentials the way boto3 takes them), or "off"/"" for none."""
    if not spec or spec == "off":
        return None
    if spec.startswith("s3://"):
        from .s3 import S3ParkStore

        bucket, _, prefix = spec[5:].partition("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3ParkStore(bucket, endpoint_url=os.environ.get("FARGPU_PARK_S3_ENDPOINT") or None, prefix=prefix)
    from .directory import DirectoryParkStore

    return DirectoryParkStore(spec[4:] if spec.startswith("dir:") else spec)


def default_park_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "fargpu" / "park")


def resume_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class MemorySource:
    """Where a paged session's memory lies on this node: (fd, offset, length); close_fd when the parker opened it."""

    fd: int
    offset: int
    length: int
    close_fd: bool = False


@dataclass
class Fetched:
    """A parked session fetched for a restore: its descriptor, the worker's state directory, and its memory: in an
    extent of the node's host pool (fetched straight into it: page-in is then a memory copy, with no disk between)
    or else in a file."""

    desc: dict[str, Any]
    workdir: Path
    pages: Path | None
    extent: tuple[int, int] | None = None

    def pages_arg(self) -> str:
        if self.extent is not None:
            return f"host:{self.extent[0]}:{self.extent[1]}"
        return str(self.pages or "")


@dataclass
class _Waiting:
    futures: list[asyncio.Future[str]] = field(default_factory=list)


class Parker:
    def __init__(self, store: ParkStore | None, work_dir: Path, identity: dict[str, str]) -> None:
        self.store = store
        self.work_dir = work_dir
        self.identity = identity  # backend, gpu, driver: a parked session comes back only where they match
        self.blockers: dict[str, str] = {}  # session id -> why it cannot be parked
        self.parked: dict[str, tuple[str, str, str, float]] = {}  # id -> (lease, client, result, when)
        self._waiting: dict[str, _Waiting] = {}
        self._active: dict[str, asyncio.Event] = {}  # parks under way: set when each ends
        self.parks = 0
        self.restores = 0

    # ---- status lines from a worker ----
    def on_status(self, sid: str, line: str) -> bool:
        word = line.split(" ", 1)[0]
        if word not in ("park-ready", "park-failed", "parked", "restored", "restore-failed"):
            return False
        w = self._waiting.get(sid)
        if w is not None:
            for f in w.futures:
                if not f.done():
                    f.set_result(line)
            w.futures.clear()
        return True

    async def _next(self, sid: str, exit_task: asyncio.Future[int] | None = None) -> str:
        """The worker's next park status line; "gone" once its worker exited without one (a line it wrote just
        before it died is still read, for up to half a second)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(sid, _Waiting()).futures.append(fut)
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                await asyncio.wait([f for f in (fut, exit_task) if f is not None], return_when=asyncio.FIRST_COMPLETED)
                if not fut.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), 0.5)
                return fut.result() if fut.done() else "gone"
        except TimeoutError:
            return "park-failed no answer from the worker in time"

    async def settled(self, sid: str) -> None:
        """Returns once no park of this session is under way here (at once when none is)."""
        ev = self._active.get(sid)
        if ev is not None:
            await ev.wait()

    def shown(self) -> list[tuple[str, str, str, str]]:
        """Recently parked sessions: (id, lease, client, result)."""
        now = time.monotonic()
        for sid in [s for s, v in self.parked.items() if now - v[3] > PARKED_SHOWN_S]:
            del self.parked[sid]
        return [(sid, v[0], v[1], v[2]) for sid, v in self.parked.items()]

    # ---- park ----
    async def park(self, sid: str, lease_id: str, client: str, resume_key: str, ctl_w: int,
                   memory: Callable[[], MemorySource | None], exited: Callable[[], Awaitable[int]]) -> str:
        """Parks a paged-out session (the caller paged it out). Returns "parked KEY BYTES NS" or "failed REASON".
        The caller keeps the session's paged memory (its host pool extent or spill file) until `settled`."""
        if self.store is None:
            return "failed this node has no park store (fargpu server --park-store)"
        done = self._active[sid] = asyncio.Event()
        exit_task = asyncio.ensure_future(exited())
        try:
            return await self._park(sid, lease_id, client, resume_key, ctl_w, memory, exit_task)
        finally:
            exit_task.cancel()
            self._active.pop(sid, None)
            done.set()

    async def _park(self, sid: str, lease_id: str, client: str, resume_key: str, ctl_w: int,
                    memory: Callable[[], MemorySource | None], exit_task: asyncio.Future[int]) -> str:
        assert self.store is not None
        log.info("parking session %s", sid)
        t0 = time.monotonic_ns()
        workdir = self.work_dir / f"{sid}.park"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, mode=0o700)
        stored: list[str] = []
        try:
            waiting = asyncio.ensure_future(self._next(sid, exit_task))
            await asyncio.sleep(0)
            os.write(ctl_w, f"park {workdir}\n".encode())
            ready = await waiting
            if not ready.startswith("park-ready"):
                reason = ready.partition(" ")[2] or ("its worker exited" if ready == "gone" else "the worker refused")
                if reason.startswith("unparkable: "):
                    self.blockers[sid] = reason[len("unparkable: "):]
                log.info("session %s was not parked: %s", sid, reason)
                return f"failed {reason}"
            self.blockers.pop(sid, None)
            log.info("session %s: its state is written (%s bytes); storing it", sid, ready.split()[1])
            # From here the state is complete and the worker applies nothing until the verdict: if it dies now, the
            # park can still complete (the state and the paged memory are what the session was).
            src = memory()
            try:
                total = await asyncio.to_thread(self._upload, sid, lease_id, resume_key, workdir, src, stored)
            finally:
                if src is not None and src.close_fd:
                    os.close(src.fd)
        except (OSError, ParkStoreError) as e:
            with contextlib.suppress(OSError):
                os.write(ctl_w, b"park-abort\n")
            await asyncio.to_thread(self._delete, stored)
            log.warning("parking session %s failed: %s", sid, e)
            return f"failed {e}"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        # tests widen the window in which the client may send work during a park
        await asyncio.sleep(float(os.environ.get("FARGPU_PARK_TEST_COMMIT_DELAY_S", "0") or 0))
        waiting = asyncio.ensure_future(self._next(sid, exit_task))
        await asyncio.sleep(0)
        try:
            os.write(ctl_w, b"park-commit\n")
            done = await waiting
        except OSError:  # its control pipe is closed: the worker is gone
            waiting.cancel()
            done = "gone"
        if done == "gone":
            # The worker died after its state was complete and before it could answer: it applied nothing since,
            # and everything it was is stored, so the session stays parked (its client resumes it like any other).
            log.warning("session %s: its worker exited during the park, after its state was stored: it stays "
                        "parked", sid)
            done = "parked"
        if done != "parked":
            await asyncio.to_thread(self._delete, stored)
            reason = done.partition(" ")[2] or done
            log.info("session %s was not parked: %s", sid, reason)
            return f"failed {reason}"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exit_task), 30.0)
        self.parks += 1
        result = f"parked sessions/{sid} {total} {time.monotonic_ns() - t0}"
        self.parked[sid] = (lease_id, client, result, time.monotonic())
        log.info("session %s parked in the %s park store (%d bytes)", sid, self.store.name, total)
        return result

    def _upload(self, sid: str, lease_id: str, resume_key: str, workdir: Path, mem: MemorySource | None,
                stored: list[str]) -> int:
        assert self.store is not None
        store = self.store
        base = f"sessions/{sid}"
        # first: a marker saying a park of this session is under way, and since when (Parker.sweep)
        stored.append(f"{base}/{MARKER}")
        store.put_bytes(f"{base}/{MARKER}", json.dumps({"started": time.time()}).encode())
        images = sorted(p.name[4:] for p in workdir.glob("img-*") if not p.name.endswith(".tmp"))
        have = set(store.list("images/"))
        total = 0
        for sha in images:
            path = workdir / f"img-{sha}"
            if f"images/{sha}" in have:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                total += store.put(f"images/{sha}", fd, 0, os.fstat(fd).st_size).size
            finally:
                os.close(fd)
        fd = os.open(workdir / "state", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stored.append(f"{base}/state")
            state_bytes = store.put(f"{base}/state", fd, 0, os.fstat(fd).st_size).size
        finally:
            os.close(fd)
        memory_bytes = 0
        if mem is not None and mem.length:
            stored.append(f"{base}/memory")
            memory_bytes = store.put(f"{base}/memory", mem.fd, mem.offset, mem.length).size
        desc = {
            "version": 1, "session_id": sid, "lease_id": lease_id, "resume_key_sha256": resume_key_digest(resume_key),
            **self.identity, "state_bytes": state_bytes, "memory_bytes": memory_bytes, "images": images,
            "parked_at": time.time(),
        }
        stored.insert(0, f"{base}/{DESCRIPTOR}")
        store.put_bytes(f"{base}/{DESCRIPTOR}", json.dumps(desc, sort_keys=True).encode())
        with contextlib.suppress(ParkStoreError):  # complete; a marker left here is removed by the next sweep
            store.delete(f"{base}/{MARKER}")
        return total + state_bytes + memory_bytes

    def _delete(self, keys: list[str]) -> None:
        if self.store is None:
            return
        for k in keys:  # the descriptor first: what remains is never taken for a complete park
            try:
                self.store.delete(k)
            except ParkStoreError as e:
                log.warning("could not delete %s from the park store: %s", k, e)

    # ---- restore ----
    def describe(self, sid: str) -> dict[str, Any] | None:
        """The descriptor of a parked session (None: none is stored)."""
        if self.store is None or not sid.isalnum() or len(sid) > 64:
            return None
        try:
            desc = json.loads(self.store.get_bytes(f"sessions/{sid}/{DESCRIPTOR}"))
        except (ParkStoreError, ValueError):
            return None
        return desc if isinstance(desc, dict) and desc.get("session_id") == sid else None

    def check(self, desc: dict[str, Any], lease_id: str, resume_key: str) -> str:
        """Why this client may not resume this session here ("" when it may)."""
        import hmac

        if desc.get("lease_id") != lease_id:
            return "the session belongs to another lease"
        if not resume_key or not hmac.compare_digest(str(desc.get("resume_key_sha256", "")),
                                                     resume_key_digest(resume_key)):
            return "the resume key is wrong"
        for k, have in self.identity.items():
            if str(desc.get(k, "")) != have:
                return (f"the session was parked on {k} {desc.get(k)!r} and this node has {have!r}: resume it on a "
                        "node with the same GPU model and driver")
        return ""

    def fetch(self, desc: dict[str, Any], pool: tuple[int, tuple[int, int]] | None = None) -> Fetched:
        """Downloads a parked session's state, images and memory for a worker (blocking: run it in a thread); the
        memory into `pool` (the host pool's fd and an extent of it taken for this) when given, else a file."""
        assert self.store is not None
        sid = str(desc["session_id"])
        workdir = self.work_dir / f"{sid}.restore"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, mode=0o700)
        memory = int(desc.get("memory_bytes", 0))
        if memory and pool is not None:
            try:
                self._get(f"sessions/{sid}/state", workdir / "state")
                for sha in self._images(desc):
                    self._get(f"images/{sha}", workdir / f"img-{sha}")
                self.store.get(f"sessions/{sid}/memory", pool[0], pool[1][0])
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            return Fetched(desc, workdir, None, pool[1])
        pages = self.work_dir / f"{sid}.pages" if memory else None
        try:
            self._get(f"sessions/{sid}/state", workdir / "state")
            for sha in self._images(desc):
                self._get(f"images/{sha}", workdir / f"img-{sha}")
            if pages is not None:
                with contextlib.suppress(FileNotFoundError):
                    pages.unlink()
                if self.store.link(f"sessions/{sid}/memory", pages) is None:
                    self._get(f"sessions/{sid}/memory", pages)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            if pages is not None:
                with contextlib.suppress(FileNotFoundError):
                    pages.unlink()
            raise
        return Fetched(desc, workdir, pages)

    @staticmethod
    def _images(desc: dict[str, Any]) -> list[str]:
        images = desc.get("images", [])
        if not isinstance(images, list) or not all(isinstance(h, str) and len(h) == 64 and h.isalnum() for h in images):
            raise ParkStoreError("the parked session names an image that is not a SHA-256")
        return images

    def _get(self, key: str, path: Path) -> None:
        assert self.store is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.store.get(key, fd, 0)
        finally:
            os.close(fd)

    def consumed(self, sid: str) -> None:
        """The session was restored: its parked state goes (blocking), so it can never be restored twice. Raises
        ParkStoreError when the descriptor could not be deleted (then nothing is, and the restored worker must not
        go on: the state stays parked); the rest goes best-effort (a sweep removes what is left)."""
        assert self.store is not None
        self.store.delete(f"sessions/{sid}/{DESCRIPTOR}")
        self.restores += 1
        self.parked.pop(sid, None)
        self._delete([f"sessions/{sid}/state", f"sessions/{sid}/memory", f"sessions/{sid}/{MARKER}"])

    def sweep(self, max_age_s: float | None = None) -> list[str]:
        """Removes what nodes that died mid-park or mid-restore left (blocking; at start): in the store, a session's
        objects without a descriptor whose park marker is older than `max_age_s` (or missing: a restore that
        stopped after deleting the descriptor); a complete park's leftover marker; and here, park and restore work
        directories older than that. Returns the session ids swept from the store."""
        age = orphan_age_s() if max_age_s is None else max_age_s
        now = time.time()
        for d in (list(self.work_dir.glob("*.park")) + list(self.work_dir.glob("*.restore"))
                  if self.work_dir.is_dir() else []):
            with contextlib.suppress(OSError):
                if now - d.stat().st_mtime >= age:
                    shutil.rmtree(d, ignore_errors=True)
        if self.store is None:
            return []
        names: dict[str, set[str]] = {}
        for key in self.store.list("sessions/"):
            parts = key.split("/")
            if len(parts) == 3:
                names.setdefault(parts[1], set()).add(parts[2])
        for key, key_age in self.store.partial("sessions/").items():  # writes cut short, e.g. of a marker
            parts = key.split("/")
            if len(parts) == 3 and key_age >= age:
                names.setdefault(parts[1], set())
        swept = []
        for sid, have in names.items():
            base = f"sessions/{sid}"
            if DESCRIPTOR in have:
                if MARKER in have:
                    self._delete([f"{base}/{MARKER}"])
                continue
            if MARKER in have:
                try:
                    started = float(json.loads(self.store.get_bytes(f"{base}/{MARKER}")).get("started", 0))
                except (ParkStoreError, ValueError, TypeError, AttributeError):
                    started = 0.0
                if now - started < age:
                    continue  # a park under way somewhere
            self._delete([f"{base}/{name}" for name in SESSION_OBJECTS if name != DESCRIPTOR])
            swept.append(sid)
        if swept:
            log.warning("park store: removed what %d interrupted park(s) or restore(s) left: %s", len(swept),
                        ", ".join(sorted(swept)))
        return swept
