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
bytes between it and the TLS session (one thread per connection: the session's, each striped data connection's and
the callback connection's). The relay costs a copy and a thread hop each way; bench/tls_cost_gpu.sh measures it.

The certificate: `--tls-cert/--tls-key` (FARGPU_TLS_CERT / FARGPU_TLS_KEY), else the one the pool issued the node
at enrolment (an https:// pool; `use_pool_cert`), else for a node without a TLS pool this machine's development CA
(`<state dir>/tls/`; clients elsewhere set FARGPU_TLS_CA to its ca.pem). Handshakes have the HELLO deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from pathlib import Path

from fargpu.pool_manager.tls import is_loopback, machine_names, mode_from_env, wanted
from fargpu.protocol import handshake
from fargpu.protocol.wire import HEADER_SIZE, MAX_HELLO, ProtocolError, decode_header

log = logging.getLogger("fargpu.server.tls")

TLS_RECORD_HANDSHAKE = 0x16
_CHUNK = 256 * 1024
_HIGH_WATER = 4 << 20  # bytes buffered toward one side before the relay stops reading the other


class RelayedSocket(socket.socket):
    """The worker's end of a TLS connection the agent terminates (a socketpair end, but a remote client)."""


class DataTls:
    def __init__(self, mode: str, listen_host: str, cert: str | None = None, key: str | None = None,
                 pool_issues: bool = False, advertise_host: str = "") -> None:  # fmt: skip
        """`pool_issues`: the certificate comes from the pool at enrolment (an https:// pool)."""
        self.required = wanted(mode, [listen_host]) if listen_host else mode == "on"
        self.context: ssl.SSLContext | None = None
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
        except TimeoutError:
            log.warning("refused a client from %s: no HELLO within %g s (stalled handshake)", peer, timeout_s)
            conn.close()
            return None
        if first and first[0] == TLS_RECORD_HANDSHAKE:
            if self.context is None:
                why = ("TLS is off on this node (--tls off)" if not self.required else "this node has no certificate "
                       "yet (it gets one when it enrols with a TLS pool, or from --tls-cert)")  # fmt: skip
                log.warning("refused a TLS client from %s: %s", peer, why)
                await _refuse(conn, why)  # in plaintext: the client's TLS reports a peer without TLS
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


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.num_tickets = 0  # no resumption tickets: nothing to send after the handshake
    return ctx


def _server_context_from_bytes(cert: bytes, key: bytes) -> ssl.SSLContext:
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
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        async with asyncio.timeout(timeout_s):
            await ready
    finally:
        loop.remove_reader(conn.fileno())
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


def start_relay(conn: socket.socket, ctx: ssl.SSLContext, peer: str, timeout_s: float) -> RelayedSocket:
    """Terminates TLS on `conn` in a thread; returns the end the worker is given."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker_end = RelayedSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=theirs.detach())
    worker_end.setblocking(False)
    threading.Thread(target=_relay, args=(conn, mine, ctx, peer, timeout_s), name="fargpu-tls-relay",
                     daemon=True).start()  # fmt: skip
    return worker_end


def _relay(raw: socket.socket, plain: socket.socket, ctx: ssl.SSLContext, peer: str, timeout_s: float) -> None:
    try:
        raw.setblocking(False)
        plain.setblocking(False)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(inc, out, server_side=True)
        if _handshake(raw, tls, inc, out, peer, timeout_s):
            _pump(raw, plain, tls, inc, out)
    except Exception as e:  # a relay must never take the agent down; the connection just ends
        log.warning("TLS relay for %s ended: %s", peer, e)
    finally:
        raw.close()
        plain.close()


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
            view = view[n:]
        except BlockingIOError:
            if not select.select([], [sock], [], max(0.0, deadline - time.monotonic()))[1]:
                raise TimeoutError("the peer takes no bytes") from None


def _handshake(raw: socket.socket, tls: ssl.SSLObject, inc: ssl.MemoryBIO, out: ssl.MemoryBIO, peer: str,
               timeout_s: float) -> bool:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            tls.do_handshake()
            _send_all(raw, out.read(), deadline)
            return True
        except ssl.SSLWantReadError:
            _send_all(raw, out.read(), deadline)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([raw], [], [], left)[0]:
                log.warning("refused a TLS client from %s: no TLS handshake within %g s", peer, timeout_s)
                return False
            data = raw.recv(_CHUNK)
            if not data:
                log.debug("a TLS client from %s left during the handshake", peer)
                return False
            inc.write(data)
        except ssl.SSLError as e:
            with contextlib.suppress(OSError, TimeoutError):
                _send_all(raw, out.read(), deadline)  # the alert tells the client why
            log.warning("refused a TLS client from %s: handshake failed (%s)", peer, e.reason or e)
            return False


def _pump(raw: socket.socket, plain: socket.socket, tls: ssl.SSLObject, inc: ssl.MemoryBIO,
          out: ssl.MemoryBIO) -> None:  # fmt: skip
    to_net = bytearray()  # encrypted, for the client
    to_plain = bytearray()  # decrypted, for the worker
    net_eof = plain_eof = False
    poller = select.poll()
    rfd, pfd = raw.fileno(), plain.fileno()
    while True:
        if net_eof and not to_plain:
            return
        if plain_eof and not to_net:
            with contextlib.suppress(ssl.SSLError, OSError, TimeoutError):
                tls.unwrap()
            with contextlib.suppress(OSError, TimeoutError):
                _send_all(raw, out.read(), time.monotonic() + 1)
            return
        rev = (select.POLLIN if not net_eof and len(to_plain) < _HIGH_WATER else 0) | (select.POLLOUT if to_net else 0)
        pev = (select.POLLIN if not plain_eof and len(to_net) < _HIGH_WATER else 0) | (
            select.POLLOUT if to_plain else 0)  # fmt: skip
        for fd, ev in ((rfd, rev), (pfd, pev)):
            if ev:
                poller.register(fd, ev)
            else:
                _unregister(poller, fd)
        for fd, ev in poller.poll():
            if fd == rfd:
                if ev & select.POLLOUT and to_net:
                    try:
                        del to_net[: raw.send(to_net)]
                    except BlockingIOError:
                        pass
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR) and rev & select.POLLIN:
                    try:
                        data = raw.recv(_CHUNK)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        net_eof = True
                    elif data:
                        inc.write(data)
                        net_eof = _decrypt(tls, to_plain)
                        to_net += out.read()  # a post-handshake answer, if the client asked for one
                elif ev & (select.POLLHUP | select.POLLERR) and not rev & select.POLLIN:
                    if ev & select.POLLERR:
                        return
            else:
                if ev & select.POLLOUT and to_plain:
                    try:
                        del to_plain[: plain.send(to_plain)]
                    except BlockingIOError:
                        pass
                    except OSError:
                        return  # the worker is gone
                if ev & (select.POLLIN | select.POLLHUP) and pev & select.POLLIN:
                    try:
                        data = plain.recv(_CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        plain_eof = True
                    else:
                        tls.write(data)
                        to_net += out.read()
                elif ev & select.POLLHUP and not pev & select.POLLIN and not to_plain:
                    return


def _decrypt(tls: ssl.SSLObject, into: bytearray) -> bool:
    """Moves what the TLS session can decrypt into `into`; True when the client ended the session."""
    while True:
        try:
            chunk = tls.read(_CHUNK)
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return True
        except ssl.SSLError as e:
            log.warning("TLS error from a client: %s", e.reason or e)
            return True
        if not chunk:
            return True
        into += chunk


def _unregister(poller: select.poll, fd: int) -> None:
    with contextlib.suppress(KeyError):
        poller.unregister(fd)
