"""The node agent: listens on TCP and/or a unix socket, authenticates each client's HELLO, and starts one
worker process per session with the client's socket (server/worker.py). It tracks the sessions (their
lease, worker pid and VRAM), ends them on request with a reason the client sees, and never initialises
CUDA itself. Implements NodeAgentAPI for the pool-manager link."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fargpu import timeline
from fargpu.protocol import handshake
from fargpu.protocol.handshake import hello_timeout
from fargpu.protocol.wire import HEADER_SIZE, MAX_HELLO, FrameType, ProtocolError, decode_header

from . import host_pool_vmm
from .agent_api import DeviceInfo, SessionInfo
from .auth import Authenticator, AuthError, Grant
from .backend import Backend
from .checkpoint import open_checkpoint
from .checkpoint import test_double_from_env as checkpoint_test_double
from .devices import devices as device_infos
from .devices import devices_off_loop, gpu_memory_of_pid, visible_devices_env
from .ipc_broker import IpcBroker
from .lease_ledger import LedgerBook, TooManySessions
from .pager import Pager
from .park.node import Fetched, MemorySource, Parker, default_park_dir, open_store
from .park.store import ParkStoreError
from .spawn import SpawnedProcess, spawn
from .tls import DataTls, RelayedSocket

log = logging.getLogger("fargpu.server")
VMM_FIRST_FD = 11  # a worker's first slab of a driver-memory host pool (3-10 are its other descriptors)
RESTORE_VA_BIAS_MB = 256  # how far below the parking worker's the driver's range starts in a restoring worker


@dataclass
class AgentConfig:
    listen: str | None = "127.0.0.1:7100"  # host:port, or None for no TCP
    unix_path: str | None = None
    max_frame: int = 80 * 1024 * 1024
    advertise: str | None = None  # endpoint clients should use; default: the TCP listen address
    max_sessions_per_lease: int = 16  # when the pool does not say (static tokens)
    ctx_charge: int = 512 << 20  # VRAM charged to the lease per context a session creates (about an H100's)
    resident_limit: int | None = None  # VRAM that may be resident at once; None: the devices' total
    host_pool_bytes: int = 4 << 30  # the host page pool (a sparse memfd: memory is used only as sessions page out)
    spill_dir: str | None = None  # where page-out spills when the pool is full; None: the state dir's spill/
    idle_page_out_s: float | None = None  # page out a session idle this long, unless its lease says otherwise
    deep_after_s: float | None = None  # take a session paged out this long to the deeper level (driver checkpoint)
    # The host pool's memory: "vmm" (host-NUMA driver memory, paged by DMA), "memfd", or "auto" (vmm on a real GPU,
    # a memfd where the driver cannot make it or on the simulated device)
    host_pool_kind: str = "auto"
    host_pool_slab_mb: int = 0  # a vmm pool's slab size; 0: FARGPU_HOST_POOL_SLAB_MB or 256 (server/host_pool_vmm.py)
    host_pool_prefault: bool | None = None  # allocate the host pool's pages at start; None: on a real GPU only
    park_store: str | None = None  # where parked sessions go (server/park/node.py); None: the state dir's park/
    idle_park_s: float | None = None  # park a session paged out and idle this long (None: only when the pool asks)
    arena: str = "0x600000000000:0x100000000000"  # the workers' address arena, as server/park/arena.py normalises it
    # Workers run without address-space randomisation, so that a parked session gets its device addresses back in a
    # new worker (server/worker.py keep_addresses_stable); off trades parking on a real GPU for randomised workers
    stable_addresses: bool = True


@dataclass
class _Session:
    info: SessionInfo
    proc: SpawnedProcess
    ctl_w: int
    attach_key: str = ""  # the secret a callback connection presents (HELLO_OK gave it to the client)
    attach_sock: socket.socket | None = None  # hands callback connections to the worker (SCM_RIGHTS)
    started: float = field(default_factory=time.monotonic)
    vram: int = 0
    ended: str = ""
    resume_key: str = ""  # the client's secret for resuming the session after it was parked
    restoring: bool = False  # a restored worker waits for "consumed": nothing else may reach its control pipe


class NodeAgent:
    def __init__(self, backend: Backend, auth: Authenticator, config: AgentConfig | None = None) -> None:
        self.backend_info = backend
        self.backend = backend.name
        self.auth = auth
        self.config = config or AgentConfig()
        self._sessions: dict[str, _Session] = {}
        self._servers: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._ledgers = LedgerBook(self.config.max_sessions_per_lease)
        self.ipc = IpcBroker()  # CUDA IPC handles between the workers of one lease (server/ipc_broker.py)
        devs = device_infos(backend, 0)  # once, before the loop serves anything: on a GPU each call initialises NVML
        # Which GPU is which (index, UUID) does not change while the node runs: a new session's visible devices
        # come from here, not from NVML again on the path to its worker (when every UUID was read).
        self._identities = devs if devs and all(d.uuid.startswith(("GPU-", "MIG-")) for d in devs) else None
        limit = self.config.resident_limit
        if limit is None:
            limit = sum(d.total_bytes for d in devs)
        prefault = self.config.host_pool_prefault
        kind = self.config.host_pool_kind
        if kind not in ("auto", "vmm", "memfd"):
            raise ValueError(f"host pool kind {kind!r}: use auto, vmm or memfd")
        maker = None
        if kind == "vmm" or (kind == "auto" and not backend.simulated):
            pool_driver = str(backend.driver) if backend.driver else "libcuda.so.1"
            maker = functools.partial(host_pool_vmm.make, pool_driver, slab_mb=self.config.host_pool_slab_mb)
        self.pager = Pager(limit, self.config.host_pool_bytes, Path(self.config.spill_dir or default_spill_dir()),
                           prefault=not backend.simulated if prefault is None else prefault, pool_maker=maker)
        if not backend.simulated:
            self.pager.measure_held = gpu_memory_of_pid
            driver = str(backend.driver) if backend.driver else "libcuda.so.1"
            self.pager.open_checkpoint = lambda: open_checkpoint(driver)
        elif (double := checkpoint_test_double()) is not None:
            log.warning("the deeper paging level uses a protocol test double (FARGPU_TEST_FAKE_CHECKPOINT): "
                        "nothing leaves the simulated device")
            self.pager.checkpoint = double
        self.tcp_port: int | None = None
        self.endpoint = ""
        self.parker = Parker(
            open_store(self.config.park_store if self.config.park_store is not None else default_park_dir()),
            Path(self.config.spill_dir or default_spill_dir()),
            {"backend": backend.name, "gpu": devs[0].name if devs else "", "driver": backend.driver_version},
        )
        self.on_sessions_changed: Callable[[], None] | None = None  # the pool link heartbeats at once
        self.data_tls: DataTls | None = None  # TLS on TCP connections (server/tls.py); None: plaintext only

    @property
    def tls_on(self) -> bool:
        """Whether clients reach this node's TCP endpoint over TLS (it is published as tls://)."""
        return self.data_tls is not None and self.data_tls.required

    def use_pool_cert(self, cert: Any) -> None:
        """The certificate the pool issued this node at enrolment also serves its data socket."""
        if self.data_tls is not None:
            self.data_tls.use_cert(cert.cert, cert.key)

    # ---- NodeAgentAPI ----
    def sessions(self) -> list[SessionInfo]:
        out = []
        for s in self._sessions.values():
            st = self.pager.states.get(s.info.session_id)
            out.append(SessionInfo(
                s.info.session_id, s.info.lease_id, s.info.pid, s.vram, s.info.client,
                state=st.state if st else "resident", resident_bytes=self.pager.resident_bytes(s.info.session_id),
                paged_bytes=st.paged_bytes if st else 0, idle_s=(st.idle_ms if st else 0) / 1000,
                unpageable_bytes=st.unpageable_bytes if st else 0,
                park_blocker=self.parker.blockers.get(s.info.session_id, ""),
            ))
        for sid, lease, client, _result in self.parker.shown():
            if sid not in self._sessions:
                out.append(SessionInfo(sid, lease, 0, 0, client, state="parked"))
        return out

    async def park(self, session_id: str) -> str:
        """Parks a session off the node (server/park/node.py): pages it out first if it is resident."""
        sess = self._sessions.get(session_id)
        st = self.pager.states.get(session_id)
        if sess is None or st is None:
            return "failed no such session on this node"
        if sess.restoring:
            return "failed the session is being restored"
        if st.state == "paged-host" and not self.pager.pool.cpu_view:
            # Its memory is in driver memory this process cannot read: back to the GPU, then out to a spill file.
            res = await self.page_in(session_id)
            if not res.startswith("resident"):
                return f"failed the session's memory is in the node's driver-memory pool and could not be moved: {res}"
        if st.state == "resident":
            res = await self.page_out(session_id, "auto" if self.pager.pool.cpu_view else "disk")
            if not res.startswith("paged"):
                return res
        if st.state not in ("paged-host", "paged-disk"):
            return f"failed the session is {st.state}"

        def memory() -> MemorySource | None:
            if st.extent is not None:
                return MemorySource(self.pager.pool.fd, st.extent[0], st.paged_bytes)
            if st.spill is not None and st.paged_bytes:
                return MemorySource(os.open(st.spill, os.O_RDONLY | os.O_CLOEXEC), 0, st.paged_bytes, close_fd=True)
            return None

        res = await self.parker.park(session_id, sess.info.lease_id, sess.info.client, sess.resume_key, sess.ctl_w,
                                     memory, sess.proc.wait)
        log.info("park of session %s: %s", session_id, res)
        return res

    async def page_out(self, session_id: str, to: str = "auto") -> str:
        """Pages a session's memory out to the host pool (or disk); returns "paged ..." or "failed REASON"."""
        sess = self._sessions.get(session_id)
        if sess is None:
            return "failed no such session on this node"
        if sess.restoring:  # its worker reads nothing but "consumed" until then
            return "failed the session is being restored"
        res = await self.pager.page_out(session_id, sess.ctl_w, to, pid=sess.proc.pid)
        log.info("page-out of session %s: %s", session_id, res)
        return res

    async def page_in(self, session_id: str) -> str:
        sess = self._sessions.get(session_id)
        if sess is None:
            return "failed no such session on this node"
        if sess.restoring:  # its worker reads nothing but "consumed" until then
            return "failed the session is being restored"
        res = await self.pager.page_in(session_id, sess.ctl_w)
        log.info("page-in of session %s: %s", session_id, res)
        return res

    async def _idle_policy(self) -> None:
        """Pages out sessions idle past their timeout (the lease's, else the node's), where QoS allows."""
        while True:
            await asyncio.sleep(1.0)
            for sid, st in list(self.pager.states.items()):
                timeout = st.idle_timeout_s if st.idle_timeout_s is not None else self.config.idle_page_out_s
                if (timeout is not None and timeout > 0 and st.state == "resident" and st.qos != "guaranteed"
                        and st.idle_ms >= timeout * 1000 and self.pager.resident_bytes(sid) > 0
                        and time.monotonic() - st.last_attempt >= max(timeout, 5.0)):
                    st.last_attempt = time.monotonic()  # a failing page-out is retried, not hammered
                    try:
                        await self.page_out(sid)
                    except Exception:  # one session's trouble must not stop the policy for the others
                        log.exception("page-out of idle session %s failed", sid)
                deep = self.config.deep_after_s
                if (deep and st.state in ("paged-host", "paged-disk") and not st.deep and st.paged_at
                        and time.monotonic() - st.paged_at >= deep and time.monotonic() - st.last_attempt >= deep):
                    st.last_attempt = time.monotonic()
                    try:
                        await self.page_out(sid, "deep")
                    except Exception:
                        log.exception("taking paged session %s to the deeper level failed", sid)

    async def _park_policy(self, idle_s: float) -> None:
        """Parks sessions that are paged out and idle past idle_s (an unparkable one stays paged, its reason kept,
        and is tried again once it has run and paged out since: what made it unparkable, a CUDA graph say, may be
        gone)."""
        tried: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            for sid, st in list(self.pager.states.items()):
                last = tried.get(sid, 0.0)
                again = (st.paged_at > last if sid in self.parker.blockers  # it ran and paged out since
                         else time.monotonic() - last >= 30.0)  # a park that failed otherwise: not hammered
                if st.state in ("paged-host", "paged-disk") and st.idle_ms >= idle_s * 1000 and again:
                    tried[sid] = time.monotonic()
                    try:
                        await self.park(sid)
                    except Exception:  # one session's trouble must not stop the policy for the others
                        log.exception("parking idle session %s failed", sid)

    async def _sweep_park_store(self) -> None:
        """Once at start: what parks and restores that a node died in the middle of left behind (Parker.sweep)."""
        try:
            await asyncio.to_thread(self.parker.sweep)
        except (OSError, ParkStoreError) as e:
            log.warning("could not sweep the park store for interrupted parks: %s", e)

    def _ctl_fds(self) -> dict[str, int]:
        return {sid: s.ctl_w for sid, s in self._sessions.items() if not s.restoring}

    async def _answer_need(self, sess: _Session, need: int) -> None:
        pids = {sid: s.proc.pid for sid, s in self._sessions.items()}
        ok = await self.pager.make_room(sess.info.session_id, need, self._ctl_fds(), pids)
        with contextlib.suppress(OSError):
            os.write(sess.ctl_w, b"grant\n" if ok else b"deny no session could give way\n")

    async def _answer_wake(self, sess: _Session) -> None:
        why = await self.pager.wake(sess.info.session_id, sess.proc.pid)
        with contextlib.suppress(OSError):
            os.write(sess.ctl_w, b"grant\n" if not why else f"deny {why}\n".encode())

    def devices(self) -> list[DeviceInfo]:
        return device_infos(self.backend_info, self._vram_in_use())

    async def read_devices(self) -> list[DeviceInfo]:
        # What the sessions use is summed here, on the loop that changes it; only the NVML read leaves the loop.
        return await devices_off_loop(self.backend_info, self._vram_in_use())

    def _vram_in_use(self) -> int:
        return sum(s.vram for s in self._sessions.values())

    async def end_lease(self, lease_id: str, reason: str) -> int:
        victims = [s for s in self._sessions.values() if s.info.lease_id == lease_id]
        await asyncio.gather(*(self._end(s, reason) for s in victims))
        return len(victims)

    async def drain(self) -> None:
        self._draining = True

    async def undrain(self) -> None:
        self._draining = False

    # ---- lifecycle ----
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.listen:
            host, _, port = self.config.listen.rpartition(":")
            s = socket.create_server((host or "127.0.0.1", int(port)), reuse_port=False)
            s.setblocking(False)
            self.tcp_port = s.getsockname()[1]
            self._servers.append(s)
            self.endpoint = self.config.advertise or f"{host or '127.0.0.1'}:{self.tcp_port}"
        if self.config.unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.unix_path)
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.bind(self.config.unix_path)
            os.chmod(self.config.unix_path, 0o600)
            u.listen(128)
            u.setblocking(False)
            self._servers.append(u)
            if not self.endpoint:
                self.endpoint = self.config.advertise or self.config.unix_path
        if not self._servers:
            raise ValueError("the node server needs a TCP address or a unix socket path to listen on")
        for srv in self._servers:
            self._spawn(self._accept_loop(srv))
        self._spawn(self._idle_policy())
        if self.config.idle_park_s:
            self._spawn(self._park_policy(self.config.idle_park_s))
        self._spawn(self._sweep_park_store())
        log.info("fargpu node server: backend %s; listening on %s", self.backend_info.describe(),
                 ", ".join(str(s.getsockname()) for s in self._servers))
        del loop

    async def stop(self, reason: str = "the node server is shutting down") -> None:
        for srv in self._servers:
            srv.close()
        await asyncio.gather(*(self._end(s, reason) for s in list(self._sessions.values())))
        for t in list(self._tasks):
            t.cancel()
        if self.config.unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.unix_path)
        self.pager.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, srv: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(srv)
            except OSError:
                return
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.data_tls is not None:  # TLS, or plaintext where the policy allows it (server/tls.py)
                    self._spawn(self._admit_tcp(conn, str(_addr[0])))
                    continue
            self._spawn(self._handle(conn))

    async def _admit_tcp(self, conn: socket.socket, peer: str) -> None:
        assert self.data_tls is not None
        served = await self.data_tls.admit(conn, peer, hello_timeout())
        if served is not None:
            await self._handle(served)

    async def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        while len(buf) < n:
            chunk = await loop.sock_recv(conn, n - len(buf))
            if not chunk:
                raise ProtocolError("the client closed the connection during the handshake")
            buf += chunk
        return bytes(buf)

    async def _handle(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limit = hello_timeout()
        try:
            async with asyncio.timeout(limit):
                hdr = decode_header(await self._recv_exact(conn, HEADER_SIZE), MAX_HELLO)
                if hdr.type != FrameType.HELLO:
                    raise ProtocolError("expected HELLO")
                hello = handshake.decode_hello(await self._recv_exact(conn, hdr.length))
            timeline.mark("session.hello", hello.client)
            if self._draining:
                raise AuthError("this node is draining and accepts no new sessions")
            grant = await self.auth.authenticate(hello.token)
            timeline.mark("session.authorised", grant.lease_id)
        except (ProtocolError, AuthError, TimeoutError) as exc:
            reason = str(exc) or f"no complete HELLO within {limit:g} s (stalled handshake); closing the connection"
            if "closed the connection during the handshake" in reason:
                log.debug("a client left before its handshake (a reachability probe)")  # `fargpu run` and the stub
            else:
                log.warning("refused a client: %s", reason)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err(reason))
            conn.close()
            return
        if hello.attach_session:
            await self._attach(conn, hello)
            return
        fetched: Fetched | None = None
        if hello.resume_session and await self._reattach(conn, hello, grant):
            return
        if hello.resume_session:
            fetched = await self._fetch_parked(conn, hello, grant)
            if fetched is None:
                return
        sid = fetched.desc["session_id"] if fetched else uuid.uuid4().hex[:12]
        quota = grant.vram_quota_bytes or 0
        gpus: tuple[int, ...] = tuple(getattr(grant, "gpus", ()) or ())
        visible: dict[str, str] = {}
        if gpus:  # the session sees exactly the lease's GPUs, in lease order, and the quota is per GPU
            try:
                visible = visible_devices_env(gpus, self._identities or await devices_off_loop(self.backend_info, 0))
            except ValueError as exc:
                why = f"lease {grant.lease_id} cannot run here: {exc} (the pool's record of this node is stale)"
                log.warning("refused a client: %s", why)
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(conn, handshake.hello_err(why))
                conn.close()
                self._drop_fetched(fetched)
                return
            quota = getattr(grant, "vram_per_gpu_bytes", None) or quota // len(gpus)
        try:  # the lease's quota covers all its sessions here: they share its ledger
            ledger, slot = self._ledgers.admit(grant.lease_id, sid, quota, getattr(grant, "max_sessions", None),
                                               len(gpus))
        except TooManySessions as exc:
            log.warning("refused a client of lease %s: %s", grant.lease_id, exc)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err(str(exc), retry=fetched is not None))
            conn.close()
            self._drop_fetched(fetched)
            return
        try:
            node_slot = self.pager.admit(sid, str(getattr(grant, "qos", None) or "standard"),
                                         getattr(grant, "idle_timeout_s", None))
        except TooManySessions:
            self._ledgers.release(grant.lease_id, sid)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err("this node has no room for another session",
                                                                  retry=fetched is not None))
            conn.close()
            self._drop_fetched(fetched)
            return
        if fetched is not None and fetched.extent is not None:  # its memory is paged, in the host pool
            pst = self.pager.states[sid]
            pst.state, pst.extent, pst.paged_bytes = "paged-host", fetched.extent, int(fetched.desc["memory_bytes"])
        elif fetched is not None and fetched.pages is not None:  # its memory is paged, in the fetched file
            pst = self.pager.states[sid]
            pst.state, pst.spill, pst.paged_bytes = "paged-disk", fetched.pages, int(fetched.desc["memory_bytes"])
        try:
            await self._run_session(conn, hello, grant, sid, ledger.fd, slot, node_slot, fetched, visible)
        finally:
            await self.parker.settled(sid)  # a park still reading its paged memory keeps it until it is stored
            self.pager.forget(sid)
            self._ledgers.release(grant.lease_id, sid)
            if fetched is not None:
                shutil.rmtree(fetched.workdir, ignore_errors=True)

    def _drop_fetched(self, fetched: Fetched | None) -> None:
        """A fetched session that will not be restored here: its extent, files and state directory go."""
        if fetched is None:
            return
        if fetched.extent is not None:
            self.pager.pool.give(fetched.extent)
        if fetched.pages is not None:  # off the event loop: deleting a large file can take a while (discard)
            self.pager.spill_deleter.delete(fetched.pages)
        shutil.rmtree(fetched.workdir, ignore_errors=True)

    async def _fetch_parked(self, conn: socket.socket, hello: handshake.Hello, grant: Grant) -> Fetched | None:
        """A client resuming its parked session: the session's state, fetched from the park store for a new worker
        (None: refused, with the reason sent to the client)."""
        loop = asyncio.get_running_loop()
        sid = hello.resume_session
        old = self._sessions.get(sid)
        if old is not None:  # its worker is still ending after the park
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(old.proc.wait(), 10.0)
        await self.parker.settled(sid)  # a park still storing it (its worker may have died meanwhile) ends first
        desc = await asyncio.to_thread(self.parker.describe, sid)
        why, retry = "", False
        if sid in self._sessions:
            why, retry = f"session {sid} is still live on this node", True
        elif desc is None:
            why = (f"no parked state for session {sid}: the session's work was lost with its node (or it was "
                   "restored already)")
        else:
            why = self.parker.check(desc, grant.lease_id, hello.resume_key)
        fetched = None
        if not why and desc is not None:
            # its memory straight into the host pool where there is room (page-in is then a memory copy)
            memory = int(desc.get("memory_bytes", 0))
            # A pool still being allocated up front is written over with zeros: wait for it (bounded), else a file.
            # (A driver-memory pool has no CPU view here: its memory goes to a spill file instead.)
            ready = (memory > 0 and self.pager.pool.fd >= 0 and self.pager.pool.cpu_view
                     and await asyncio.to_thread(self.pager.pool.ready.wait, 60))
            ext = self.pager.pool.take(memory) if ready else None
            try:
                fetched = await asyncio.to_thread(self.parker.fetch, desc,
                                                  (self.pager.pool.fd, ext) if ext is not None else None)
            except (OSError, ValueError, ParkStoreError) as e:
                why, retry = f"the parked session could not be fetched from the park store: {e}", True
            if (fetched is None or fetched.extent is None) and ext is not None:
                self.pager.pool.give(ext)
        if fetched is None:
            log.warning("refused to resume session %s: %s", sid, why)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err(f"cannot resume: {why}", retry=retry))
            conn.close()
        return fetched

    async def _run_session(
        self, conn: socket.socket, hello: handshake.Hello, grant: Grant, sid: str, ledger_fd: int, slot: int,
        node_slot: int, fetched: Fetched | None = None, visible: dict[str, str] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        attach_key = secrets.token_hex(16)
        attach_parent, attach_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl_r, ctl_w = os.pipe()
        st_r, st_w = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env.update(visible or {})  # the lease's GPUs only (devices.visible_devices_env)
        # The worker sees its descriptors at fixed numbers (server/spawn.py maps them).
        args = [
            sys.executable, "-P", "-m", "fargpu.server.worker", "--fd", "3", "--ctl-fd", "4",
            "--status-fd", "5", "--driver", str(self.backend_info.driver), "--backend", self.backend,
            "--session", sid, "--max-frame", str(self.config.max_frame),
            "--attach-fd", "6", "--attach-key", attach_key,
            "--driver-version", self.backend_info.driver_version,
            "--ledger-fd", "7", "--ledger-slot", str(slot), "--ctx-charge", str(self.config.ctx_charge),
            "--node-fd", "8", "--node-slot", str(node_slot),
        ]
        resume_key = hello.resume_key if fetched is not None else secrets.token_hex(16)
        env["FARGPU_RESUME_KEY"] = resume_key  # the worker tells the client in HELLO_OK (never on a command line)
        env["FARGPU_ARENA"] = self.config.arena  # where its allocations go (server/park/arena.py)
        if self.config.stable_addresses:
            env["FARGPU_WORKER_STABLE_VA"] = "1"
            if fetched is not None:  # the driver's range starts at or below the parking worker's (worker.py)
                env["FARGPU_WORKER_VA_BIAS_MB"] = str(RESTORE_VA_BIAS_MB)
        if fetched is not None:
            args += ["--restore-dir", str(fetched.workdir), "--restore-pages", fetched.pages_arg()]
        if conn.family == socket.AF_UNIX and hello.shm and not isinstance(conn, RelayedSocket):
            args += ["--shm", str(hello.shm)]  # co-located: the worker takes the client's memfd at the handshake
        fds = {3: conn.fileno(), 4: ctl_r, 5: st_w, 6: attach_child.fileno(), 7: ledger_fd, 8: self.pager.resident.fd}
        pool = self.pager.pool
        if pool.fds:  # driver memory: every slab, at descriptors from VMM_FIRST_FD up
            args += ["--pool-vmm-fds", f"{VMM_FIRST_FD}:{len(pool.fds)}", "--pool-vmm-slab", str(pool.slab)]
            fds.update({VMM_FIRST_FD + i: fd for i, fd in enumerate(pool.fds)})
        elif pool.fd >= 0:
            args += ["--pool-fd", "9"]
            fds[9] = pool.fd
        elif sid in self.pager.states:
            self.pager.states[sid].has_pool = False
        ipc_child = self.ipc.open(sid, grant.lease_id)
        args += ["--ipc-fd", "10"]
        fds[10] = ipc_child.fileno()
        timeline.mark("worker.spawned", sid)  # as it starts (a mark after could come later than the worker's own)
        try:
            proc = spawn(args, fds, env, stable_va=self.config.stable_addresses)
        except OSError as exc:
            ipc_child.close()
            self.ipc.close(sid)
            log.error("cannot start a session worker: %s", exc)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err("the node could not start a session worker"))
            conn.close()
            for fd in (ctl_r, ctl_w, st_r, st_w):
                os.close(fd)
            attach_parent.close()
            attach_child.close()
            return
        conn.close()
        os.close(ctl_r)
        os.close(st_w)
        attach_child.close()
        ipc_child.close()
        info = SessionInfo(sid, grant.lease_id, proc.pid, 0, hello.client)
        sess = _Session(info, proc, ctl_w, attach_key=attach_key, attach_sock=attach_parent, resume_key=resume_key,
                        restoring=fetched is not None)
        self._sessions[sid] = sess
        log.info("session %s for lease %s (client %s) -> worker %d%s", sid, grant.lease_id, hello.client, proc.pid,
                 f" on GPU(s) {visible['CUDA_VISIBLE_DEVICES']}" if visible else "")
        self._spawn(self._watch_status(sess, st_r))
        self._sessions_changed()
        # Lease expiry is the pool manager's call (a lease may be renewed after this HELLO): it ends the
        # lease's sessions through end_lease(), via the command stream or the heartbeat reply.
        await proc.wait()
        self.ipc.close(sid)  # its IPC exports end with it
        self._sessions.pop(sid, None)
        self._sessions_changed()
        attach_parent.close()
        with contextlib.suppress(OSError):
            os.close(ctl_w)
        if proc.returncode is not None and proc.returncode < 0:
            log.error("session %s: its worker %d was killed by signal %d", sid, proc.pid, -proc.returncode)
        log.info("session %s ended (worker exit %s)", sid, proc.returncode)

    def _sessions_changed(self) -> None:
        if self.on_sessions_changed is not None:
            self.on_sessions_changed()

    async def _reattach(self, conn: socket.socket, hello: handshake.Hello, grant: Grant) -> bool:
        """A client resuming a session whose worker still lives here (its connection dropped: a network blip, a
        reset): with the right lease and resume key, its new connection goes to that worker, which answers it
        (server/replay/reattach.c). False: no such live session (a parked one may be restored instead)."""
        if float(os.environ.get("FARGPU_WORKER_LINGER_S", "0") or 0) <= 0:
            return False  # this node's workers end a session whose client went away
        sess = self._sessions.get(hello.resume_session)
        if sess is None or sess.restoring or sess.attach_sock is None or sess.proc.returncode is not None:
            return False
        loop = asyncio.get_running_loop()
        if sess.info.lease_id != grant.lease_id or not hmac.compare_digest(sess.resume_key, hello.resume_key):
            log.warning("refused to resume session %s: wrong lease or resume key", hello.resume_session)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err("cannot resume: wrong lease or resume key"))
            conn.close()
            return True
        try:
            socket.send_fds(sess.attach_sock, [b"r" + struct.pack("<I", hello.resume_have & 0xFFFFFFFF)],
                            [conn.fileno()])
            log.info("session %s: its client reconnected; handed to its worker %d", hello.resume_session,
                     sess.proc.pid)
        except OSError as exc:
            log.warning("could not hand session %s's new connection to its worker: %s", hello.resume_session, exc)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, handshake.hello_err("cannot resume: the worker is ending; try again",
                                                                  retry=True))
        finally:
            conn.close()
        return True

    async def _attach(self, conn: socket.socket, hello: handshake.Hello) -> None:
        """A session's callback connection (the stub runs host functions on it) or data connection (bulk copies
        are striped over it): checked against the session's secret, then handed to that session's worker."""
        loop = asyncio.get_running_loop()
        sess = self._sessions.get(hello.attach_session)
        ok = (sess is not None and sess.attach_sock is not None and bool(hello.attach_key)
              and hmac.compare_digest(sess.attach_key, hello.attach_key))
        try:
            if not ok or sess is None or sess.attach_sock is None:
                log.warning("refused a callback connection: unknown session or wrong key")
                await loop.sock_sendall(conn, handshake.hello_err("no such session, or the attach key is wrong"))
                return
            # The worker answers HELLO_OK on it once the connection is installed, so no callback can come first;
            # a data connection (striped bulk copies) is installed the same way.
            socket.send_fds(sess.attach_sock, [b"d" if hello.data else b"a"], [conn.fileno()])
        except OSError as exc:
            log.warning("could not hand a callback connection to its worker: %s", exc)
        finally:
            conn.close()

    async def _watch_status(self, sess: _Session, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                text = line.decode(errors="replace").strip()
                parts = text.split(" ", 2)
                if parts[0] == "vram" and len(parts) > 1:
                    fields = text.split()
                    sess.vram = int(fields[1])
                    st = self.pager.states.get(sess.info.session_id)
                    if st is not None and len(fields) > 2:
                        st.idle_ms = int(fields[2])
                elif parts[0] == "end":
                    sess.ended = parts[-1].strip()
                elif parts[0] == "need" and len(parts) > 1:
                    self._spawn(self._answer_need(sess, int(parts[1])))
                elif parts[0] == "wake":
                    self._spawn(self._answer_wake(sess))
                elif parts[0] in ("deep-ok", "deep-failed"):
                    self.pager.on_status(sess.info.session_id, text)
                elif parts[0] in ("paged", "pageout-failed", "paging-in", "resident", "pagein-failed"):
                    self.pager.on_status(sess.info.session_id, text)
                elif self.parker.on_status(sess.info.session_id, text) and parts[0] == "restored":
                    # restored: its parked state goes now, so it can never come back a second time; the worker
                    # applies nothing before it hears so (until then a restore may be tried again from the state)
                    try:
                        await asyncio.to_thread(self.parker.consumed, sess.info.session_id)
                        answer = b"consumed\n"
                    except ParkStoreError as e:
                        log.warning("session %s: its parked state could not be removed (%s); it stays parked",
                                    sess.info.session_id, e)
                        answer = b"keep\n"
                    with contextlib.suppress(OSError):
                        os.write(sess.ctl_w, answer)
                    sess.restoring = False
        finally:
            transport.close()

    async def _end(self, sess: _Session, reason: str, grace: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            line = " ".join(reason.split())[:240]
            os.write(sess.ctl_w, f"close {line}\n".encode())
        try:
            await asyncio.wait_for(sess.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                sess.proc.send_signal(signal.SIGKILL)
            await sess.proc.wait()


def default_spill_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "fargpu" / "spill")


def default_unix_path() -> str:
    return str(Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / f"fargpu-{os.getuid()}.sock")
