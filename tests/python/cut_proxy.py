"""A TCP proxy on loopback that the tests can cut: it forwards every connection a client opens to the node server,
counts the bytes each way, and, once armed, resets its connections (RST, as a network blip or a reset does) when a
count passes a mark. New connections go through afterwards, as they would once the network is back."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.srv.getsockname()[1])
        self.target = target_port
        self.lock = threading.Lock()
        self.sent = {"up": 0, "down": 0}  # bytes client -> server, server -> client
        self.conns: list[tuple[int, socket.socket, socket.socket]] = []  # (index, client side, server side)
        self.opened = 0
        self.cuts = 0  # cuts made by an armed mark
        self._mark: tuple[str, int, str] | None = None  # (direction, byte count, which connections)
        self.on_cut: Callable[[], None] | None = None  # called (once per cut) before the connections are reset
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, direction: str, after: int, which: str = "all") -> None:
        """Cut once `after` more bytes went `direction` ("up" or "down"); which: "all" connections, "data" (all but the
        session's own: the oldest one open), or "none" (on_cut alone runs)."""
        with self.lock:
            self._mark = (direction, self.sent[direction] + after, which)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.srv.close()
        self.cut("all")

    def cut(self, which: str = "all") -> None:
        with self.lock:
            first = min((x[0] for x in self.conns), default=0)
            victims = [c for c in self.conns if which == "all" or which == "data" and c[0] != first]
            self.conns = [c for c in self.conns if c not in victims]
        for _, a, b in victims:
            for s in (a, b):
                with contextlib.suppress(OSError):  # SO_LINGER 0: close sends a reset, not an orderly end
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):  # (wakes the other direction's thread blocked on it)
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.opened += 1
                self.conns.append((self.opened, client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, "down"), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, direction: str) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(1 << 18):
                b.sendall(data)
                fire = None
                with self.lock:
                    self.sent[direction] += len(data)
                    m = self._mark
                    if m is not None and m[0] == direction and self.sent[direction] >= m[1]:
                        fire, self._mark = m[2], None
                if fire is not None:
                    self.cuts += 1
                    if self.on_cut is not None:
                        self.on_cut()
                    self.cut(fire)  # (this connection goes on when it is not one of those cut)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)
        with self.lock:  # an orderly end (the client closed it): no longer a connection to cut
            self.conns = [c for c in self.conns if c[1] is not a and c[2] is not a]
