"""A TCP relay on loopback for the tests: it accepts connections on a port of its own and relays each, both ways, to
a target port on 127.0.0.1 (a node server's data port), one thread a direction. Subclasses watch what passes through
its hooks: cut_proxy.CutProxy counts and cuts, test_tls_data's Tap records what the client sends."""

from __future__ import annotations

import contextlib
import socket
import threading


class LoopbackRelay:
    chunk = 1 << 18  # bytes one recv reads at most

    def __init__(self, target_port: int) -> None:
        """A subclass sets up its own state first: the accepting thread starts here."""
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.srv.getsockname()[1])
        self.target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _opened(self, client: socket.socket, upstream: socket.socket) -> None:
        """A client's connection is relayed from now on (before either direction's thread starts)."""

    def _forward(self, data: bytes, to: socket.socket, up: bool) -> None:
        """Passes one read on: client to server when up, else server to client."""
        to.sendall(data)

    def _ended(self, src: socket.socket) -> None:
        """src ended (or failed) and the other side's sending was shut down."""

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
            self._opened(client, upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, up: bool) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(self.chunk):
                self._forward(data, b, up)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)
        self._ended(a)
