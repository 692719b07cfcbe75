"""The node's CUDA IPC broker: hands memory and event handles between the workers of the same lease, and only
those.

Several processes of one lease on one node (DDP: one process per GPU, each its own session and worker) share
device memory through CUDA IPC (`cuIpcGetMemHandle`/`cuIpcOpenMemHandle`, `cuIpcGetEventHandle`/`OpenEventHandle`,
`cuMemExportToShareableHandle`/`cuMemImportFromShareableHandle`). Workers are separate processes of the node, so
the real handles (a shareable file descriptor of the physical memory, or the driver's event handle bytes) must
travel between them; and they must never reach a session of another lease, which would read or write that memory.
So no real handle ever reaches a client. The exporting worker gives the real handle to this broker under a random
128-bit id, and the client gets a fargpu handle carrying only the id (server/replay/ipc.c). A worker that is asked
to open a fargpu handle asks the broker for the id; the broker answers only a worker of the lease that exported
it (the ids are per lease here: another lease's id is simply unknown, and the attempt is logged).

Each worker has its own SOCK_SEQPACKET socket pair with the agent (one message per request, descriptors passed
with SCM_RIGHTS). Requests and replies have one fixed layout, `MSG` below (little-endian): op/status, kind,
device, id, size, and 64 bytes of payload (an event's real handle). A memory export carries the exporting
worker's shareable descriptor, a memory import's reply a duplicate of it. An export lasts until its worker drops
it (the memory was freed) or ends: then the broker closes its descriptor, so the memory lives on only in the
workers that opened it, as with the driver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger("fargpu.server.ipc")

MSG = struct.Struct("<BBHi16sQ64s")  # op (request) or status (reply), kind, reserved, device, id, size, payload
OP_EXPORT, OP_IMPORT, OP_DROP = 1, 2, 3
KIND_MEM, KIND_EVENT = 1, 2
OK, REFUSED = 0, 1
MAX_REASON = 240
MAX_EXPORTS_PER_SESSION = 65536


@dataclass
class _Export:
    kind: int
    device: int
    size: int
    payload: bytes
    fd: int  # -1 for events
    session_id: str


class IpcBroker:
    def __init__(self) -> None:
        self._exports: dict[tuple[str, bytes], _Export] = {}  # (lease id, handle id)
        self._socks: dict[str, socket.socket] = {}

    def open(self, session_id: str, lease_id: str) -> socket.socket:
        """A new session's end of its broker socket (the worker's fd); the agent keeps the other end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._socks[session_id] = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable, ours, session_id, lease_id)
        return theirs

    def close(self, session_id: str) -> None:
        """The session's worker has ended: its socket and its exports go."""
        sock = self._socks.pop(session_id, None)
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        for key in [k for k, e in self._exports.items() if e.session_id == session_id]:
            self._forget(key)

    def exports_of(self, lease_id: str) -> int:
        return sum(1 for (lease, _id) in self._exports if lease == lease_id)

    def _forget(self, key: tuple[str, bytes]) -> None:
        e = self._exports.pop(key, None)
        if e is not None and e.fd >= 0:
            os.close(e.fd)

    def _on_readable(self, sock: socket.socket, session_id: str, lease_id: str) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, MSG.size + 8, 1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close(session_id)
                return
            if not msg:  # the worker closed its end
                for fd in fds:
                    os.close(fd)
                self.close(session_id)
                return
            try:
                self._handle(sock, session_id, lease_id, msg, fds)
            except OSError as exc:  # a reply that could not be sent: the worker times out and says so
                log.warning("IPC broker: could not answer session %s: %s", session_id, exc)

    def _reply(self, sock: socket.socket, status: int, kind: int = 0, device: int = 0, hid: bytes = bytes(16),
               size: int = 0, payload: bytes = b"", reason: str = "", fd: int = -1) -> None:
        body = MSG.pack(status, kind, 0, device, hid, size, payload.ljust(64, b"\0")[:64])
        body += reason.encode()[:MAX_REASON]
        if fd >= 0:
            socket.send_fds(sock, [body], [fd])
        else:
            sock.send(body)

    def _handle(self, sock: socket.socket, session_id: str, lease_id: str, msg: bytes, fds: list[int]) -> None:
        if len(msg) != MSG.size:
            for fd in fds:
                os.close(fd)
            self._reply(sock, REFUSED, reason="malformed IPC broker request")
            return
        op, kind, _r, device, hid, size, payload = MSG.unpack(msg)
        key = (lease_id, hid)
        if op == OP_EXPORT:
            fd = fds[0] if fds else -1
            for extra in fds[1:]:
                os.close(extra)
            mine = sum(1 for e in self._exports.values() if e.session_id == session_id)
            why = ""
            if kind not in (KIND_MEM, KIND_EVENT) or (kind == KIND_MEM) != (fd >= 0):
                why = "malformed IPC export"
            elif key in self._exports:
                why = "an IPC handle with this id exists already"
            elif mine >= MAX_EXPORTS_PER_SESSION:
                why = f"a session may export at most {MAX_EXPORTS_PER_SESSION} IPC handles at once"
            if why:
                if fd >= 0:
                    os.close(fd)
                self._reply(sock, REFUSED, reason=why)
                return
            self._exports[key] = _Export(kind, device, size, payload, fd, session_id)
            self._reply(sock, OK, kind, device, hid, size)
            return
        for fd in fds:
            os.close(fd)
        if op == OP_DROP:
            e = self._exports.get(key)
            if e is not None and e.session_id == session_id:
                self._forget(key)
            self._reply(sock, OK)
            return
        if op != OP_IMPORT:
            self._reply(sock, REFUSED, reason="unknown IPC broker request")
            return
        e = self._exports.get(key)
        if e is None or e.kind != kind:
            if any(h == hid for (_lease, h) in self._exports):
                log.warning("IPC broker: refused session %s of lease %s an IPC handle of another lease", session_id,
                            lease_id)
            self._reply(sock, REFUSED, reason="no such IPC handle in this lease: it was made by a session of another "
                        "lease, or its memory was freed or its process ended")
            return
        self._reply(sock, OK, e.kind, e.device, hid, e.size, e.payload, fd=e.fd)
