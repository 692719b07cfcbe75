"""TLS on the node's data socket: which connections must use it, and a relay that terminates it for the worker.

The policy (see pool_manager/tls.py): a node listening beyond loopback speaks TLS (`--tls auto`, the default;
`on` everywhere, `off` nowhere). Each TCP connection is told apart by its first byte: a TLS ClientHello (0x16) is
terminated here; a plaintext HELLO is served only from a loopback peer (same machine) or with TLS off, and a
plaintext client from another machine gets HELLO_ERR with one line saying to use tls://. Unix sockets stay
plaintext (same machine, file permissions 0600).

Termination: the kernel's TLS (kTLS), which would let the worker read and write the TCP socket itself, is not
available on the CI machines' kernel (no `tls` ULP) nor reachable from Python 3.11's ssl module, so the agent keeps
the TLS session and relays: the worker gets one end of a socketpair (exactly as a unix-socket client's connection,
so the C replay loop is unchanged; shared memory stays off: the client is remote), and a thread of the agent moves
bytes between it and the TLS session in C (libfargpu_tls.so: protocol/c/fg_tls.c, the stub's own TLS code, with
the system's OpenSSL 3 loaded at run time), one thread per connection: the session's, each striped data
connection's and the callback connection's. The relay costs a copy and a thread hop each way;
bench/tls_cost_gpu.sh measures it.

The certificate: `--tls-cert/--tls-key` (FARGPU_TLS_CERT / FARGPU_TLS_KEY), else the one the pool issued the node
at enrolment (an https:// pool; `use_pool_cert`), else for a node without a TLS pool this machine's development CA
(`<state dir>/tls/`; clients elsewhere set FARGPU_TLS_CA to its ca.pem). Handshakes have the HELLO deadline."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading
from pathlib import Path

from fargpu import paths
from fargpu.pool_manager.tls import TlsConfigError, is_loopback, machine_names, mode_from_env, wanted
from fargpu.protocol import handshake
from fargpu.protocol.wire import HEADER_SIZE, MAX_HELLO, ProtocolError, decode_header

log = logging.getLogger("fargpu.server.tls")

TLS_RECORD_HANDSHAKE = 0x16
MAX_RELAYS = int(os.environ.get("FARGPU_MAX_TLS_CONNECTIONS", "1024"))  # TLS connections (relay threads) at once
_relays = [0]
_relays_lock = threading.Lock()


class RelayedSocket(socket.socket):
    """The worker's end of a TLS connection the agent terminates (a socketpair end, but a remote client)."""


class DataTls:
    def __init__(self, mode: str, listen_host: str, cert: str | None = None, key: str | None = None,
                 pool_issues: bool = False, advertise_host: str = "") -> None:  # fmt: skip
        """`pool_issues`: the certificate comes from the pool at enrolment (an https:// pool)."""
        self.required = wanted(mode, [listen_host]) if listen_host else mode == "on"
        self.context: int | None = None  # an OpenSSL SSL_CTX of libfargpu_tls.so
        cert = cert or os.environ.get("FARGPU_TLS_CERT") or None
        key = key or os.environ.get("FARGPU_TLS_KEY") or None
        if cert and key and mode != "off":
            self.context = _server_context(Path(cert), Path(key))
        elif self.required and not pool_issues:
            from fargpu.pool_manager.tls_ca import development_server_files

            files = development_server_files(machine_names([advertise_host, listen_host]))
            self.context = _server_context(files.cert, files.key)
            log.info("TLS on the data socket with this machine's development CA (%s): clients elsewhere set "
                     "FARGPU_TLS_CA to a copy of it", files.ca)  # fmt: skip

    @classmethod
    def from_env(cls, listen: str | None, pool: str | None, advertise: str | None,
                 mode: str | None = None) -> DataTls:  # fmt: skip
        host = (listen or "").rpartition(":")[0]
        adv = (advertise or "").rpartition(":")[0]
        return cls(mode or mode_from_env(), host, pool_issues=bool(pool and pool.startswith("https://")),
                   advertise_host=adv)  # fmt: skip

    def use_cert(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serves the certificate the pool issued (unless the operator gave one)."""
        if self.context is not None and not self._from_pool:
            return
        self.context = _server_context_from_bytes(cert_pem, key_pem)
        self._from_pool = True

    _from_pool = False

    async def admit(self, conn: socket.socket, peer: str, timeout_s: float) -> socket.socket | None:
        """The socket to serve the client on (the relay's end for TLS), or None when it was refused (logged)."""
        try:
            first = await _peek(conn, timeout_s)
        except TimeoutError:  # said as the agent says it for a HELLO that stalls later (node_agent.py)
            reason = f"no complete HELLO within {timeout_s:g} s (stalled handshake); closing the connection"
            log.warning("refused a client from %s: %s", peer, reason)
            with contextlib.suppress(OSError):
                await asyncio.get_running_loop().sock_sendall(conn, handshake.hello_err(reason))
            conn.close()
            return None
        if first and first[0] == TLS_RECORD_HANDSHAKE:
            if self.context is None:
                why = ("TLS is off on this node (--tls off)" if not self.required else "this node has no certificate "
                       "yet (it gets one when it enrols with a TLS pool, or from --tls-cert)")  # fmt: skip
                log.warning("refused a TLS client from %s: %s", peer, why)
                await _refuse(conn, why)  # in plaintext: the client's TLS reports a peer without TLS
                return None
            with _relays_lock:
                busy = _relays[0] >= MAX_RELAYS
            if busy:  # a flood of (stalled) TLS connections must not take every thread of the node
                log.warning("refused a TLS client from %s: %d TLS connections are open already", peer, MAX_RELAYS)
                conn.close()
                return None
            return start_relay(conn, self.context, peer, timeout_s)
        if self.required and not is_loopback(peer) and first:
            reason = ("this node requires TLS for connections from other machines: use its endpoint tls://HOST:PORT "
                      "(FARGPU_SERVER), with the pool's ca.pem in FARGPU_TLS_CA")  # fmt: skip
            log.warning("refused a plaintext client from %s: TLS is required beyond loopback", peer)
            await _refuse(conn, reason)
            return None
        return conn


async def _refuse(conn: socket.socket, reason: str) -> None:
    """HELLO_ERR with `reason`, once what the client sent first is read (closing a socket with unread bytes
    resets it, and the client could lose the reason)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError, ProtocolError):
        async with asyncio.timeout(1.0):
            head = await loop.sock_recv(conn, HEADER_SIZE)
            if len(head) == HEADER_SIZE and head[0] != TLS_RECORD_HANDSHAKE:
                want = decode_header(head, MAX_HELLO).length
                while want > 0 and (chunk := await loop.sock_recv(conn, min(want, 65536))):
                    want -= len(chunk)
            else:
                await loop.sock_recv(conn, 16384)  # a ClientHello: one record
    with contextlib.suppress(OSError):
        await loop.sock_sendall(conn, handshake.hello_err(reason))
        conn.shutdown(socket.SHUT_WR)
    conn.close()


def _server_context(cert: Path, key: Path) -> int:
    return native().server_ctx(cert, key)


def _server_context_from_bytes(cert: bytes, key: bytes) -> int:
    """A server context from PEM bytes, through memfds (the key never touches the disk here)."""
    fds = []
    try:
        for data in (cert, key):
            fd = os.memfd_create("fargpu-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
        return _server_context(Path(f"/proc/self/fd/{fds[0]}"), Path(f"/proc/self/fd/{fds[1]}"))
    finally:
        for fd in fds:
            os.close(fd)


async def _peek(conn: socket.socket, timeout_s: float) -> bytes:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        async with asyncio.timeout(timeout_s):
            await ready
    finally:
        loop.remove_reader(conn.fileno())
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


class _Native:
    """libfargpu_tls.so (protocol/c/fg_tls.c, the stub's code): contexts, and handshake plus relay in C, so the
    bytes of a session never pass through Python (the calling thread releases the GIL in ctypes)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(str(paths.tls_lib()))
        lib.fg_tls_server_ctx.restype = ctypes.c_void_p
        lib.fg_tls_server_ctx.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.fg_tls_serve.restype = ctypes.c_int
        lib.fg_tls_serve.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                     ctypes.c_size_t]  # fmt: skip
        self.lib = lib

    def server_ctx(self, cert: Path, key: Path) -> int:
        err = ctypes.create_string_buffer(512)
        ctx = self.lib.fg_tls_server_ctx(str(cert).encode(), str(key).encode(), err, len(err))
        if not ctx:
            raise TlsConfigError(err.value.decode(errors="replace"))
        return int(ctx)


_native: _Native | None = None


def native() -> _Native:
    global _native
    if _native is None:
        _native = _Native()
    return _native


def start_relay(conn: socket.socket, ctx: int, peer: str, timeout_s: float) -> RelayedSocket:
    """Terminates TLS on `conn` in a thread (C: handshake, then relay); returns the end the worker is given."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker_end = RelayedSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=theirs.detach())
    worker_end.setblocking(False)
    net, plain = conn.detach(), mine.detach()  # the relay owns and closes both
    with _relays_lock:
        _relays[0] += 1  # counted down when its thread ends
    threading.Thread(target=_serve, args=(ctx, net, plain, peer, timeout_s), name="fargpu-tls-relay",
                     daemon=True).start()  # fmt: skip
    return worker_end


def _serve(ctx: int, net: int, plain: int, peer: str, timeout_s: float) -> None:
    err = ctypes.create_string_buffer(512)
    try:
        if native().lib.fg_tls_serve(ctx, net, plain, int(timeout_s * 1000), err, len(err)) != 0:
            log.warning("refused a TLS client from %s: %s", peer, err.value.decode(errors="replace"))
    finally:
        with _relays_lock:
            _relays[0] -= 1
