"""A TCP proxy on loopback that the tests can cut: it forwards every connection a client opens to the node server,
counts the bytes each way, and, once armed, resets its connections (RST, as a network blip or a reset does) when a
count passes a mark. New connections go through afterwards, as they would once the network is back."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

from loopback_relay import LoopbackRelay


class CutProxy(LoopbackRelay):
    def __init__(self, target_port: int) -> None:
        self.lock = threading.Lock()
        self.sent = {"up": 0, "down": 0}  # bytes client -> server, server -> client
        self.conns: list[tuple[int, socket.socket, socket.socket]] = []  # (index, client side, server side)
        self.opened = 0
        self.cuts = 0  # cuts made by an armed mark
        self._mark: tuple[str, int, str] | None = None  # (direction, byte count, which connections)
        self.on_cut: Callable[[], None] | None = None  # called (once per cut) before the connections are reset
        super().__init__(target_port)

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

    def _opened(self, client: socket.socket, upstream: socket.socket) -> None:
        with self.lock:
            self.opened += 1
            self.conns.append((self.opened, client, upstream))

    def _forward(self, data: bytes, to: socket.socket, up: bool) -> None:
        to.sendall(data)
        direction = "up" if up else "down"
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

    def _ended(self, src: socket.socket) -> None:
        with self.lock:  # an orderly end (the client closed it): no longer a connection to cut
            self.conns = [c for c in self.conns if c[1] is not src and c[2] is not src]
