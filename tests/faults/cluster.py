"""The one-machine cluster the fault suite breaks: Redis (append-only, fsync always, so a kill -9 loses nothing
acknowledged), a pool manager on the Redis store, a node server on the simulated device, and a TCP proxy in front
of the node's data port (the node advertises the proxy, so "cut the connections" closes every client's socket
mid-stream). Everything on loopback, in a private temporary folder (XDG_STATE_HOME, XDG_RUNTIME_DIR), started as
the README starts it (`python -m fargpu.cli pool-manager | server`), each component restartable after a kill.

Also here: what the checks read from outside, as an operator would: the node's /metrics, its worker processes
and open file descriptors under /proc, and the pool's leases and bookings through the admin API."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN = "fga_fault-suite-admin-token-0123456789"
ENROL = "fge_fault-suite-enrol-token-0123456789"
NODE_ID = "fault-node-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A TCP proxy (threads) whose `cut()` closes every connection it carries, both ways, at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._live |= {c, u}
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            for s in (a, b):
                if s in self._live:
                    self._live.discard(s)
                    s.close()

    def cut(self) -> int:
        with self._lock:
            live = list(self._live)
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(live) // 2

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.cut()


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "state").mkdir(parents=True, exist_ok=True)
        (tmp / "redis").mkdir(exist_ok=True)
        self.redis_port, self.rest_port, self.grpc_port = free_port(), free_port(), free_port()
        self.node_port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FARGPU_") and k != "LD_PRELOAD"}
        self.env.update(XDG_STATE_HOME=str(tmp / "state"), XDG_RUNTIME_DIR=str(tmp), XDG_CONFIG_HOME=str(tmp / "cfg"),
                        FARGPU_ENROL_TOKEN=ENROL)  # fmt: skip
        self.redis: subprocess.Popen[bytes] | None = None
        self.pool: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.proxy = Proxy(self.node_port)
        self.fd_baseline = 0

    # --- components --------------------------------------------------------------------------------------
    def _log(self, name: str) -> Any:
        return (self.tmp / f"{name}.log").open("ab")

    def start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed: run scripts/setup_redis.sh")
        self.redis = subprocess.Popen(
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.tmp / "redis")],
            stdout=self._log("redis"), stderr=subprocess.STDOUT)  # fmt: skip
        self._wait(lambda: _redis_ping(self.redis_port), "Redis")

    def start_pool(self) -> None:
        self.pool = subprocess.Popen(
            [sys.executable, "-P", "-m", "fargpu.cli", "pool-manager", "--store", "redis", "--redis-url",
             f"redis://127.0.0.1:{self.redis_port}/0", "--port", str(self.rest_port), "--grpc-port",
             str(self.grpc_port), "--admin-token", ADMIN, "--default-ttl", "20", "--log-level", "info"],
            env=self.env, stdout=self._log("pool"), stderr=subprocess.STDOUT, cwd=self.tmp)  # fmt: skip
        self._wait(lambda: httpx.get(self.url + "/healthz", timeout=2).status_code == 200, "the pool manager")

    def start_node(self) -> None:
        t0 = time.time()
        self.node = subprocess.Popen(
            [sys.executable, "-P", "-m", "fargpu.cli", "server", "--backend", "sim", "--listen",
             f"127.0.0.1:{self.node_port}", "--advertise", f"127.0.0.1:{self.proxy.port}", "--pool", self.url,
             "--metrics-port", str(self.metrics_port), "--max-sessions-per-lease", "64"],
            env=dict(self.env, FARGPU_NODE_ID=NODE_ID), stdout=self._log("node"), stderr=subprocess.STDOUT,
            cwd=self.tmp)  # fmt: skip
        # This process's registration (the pool may still list the one before a kill as up), then a settled fd count.
        self._wait(lambda: any(n["node_id"] == NODE_ID and n["state"] == "up" and n["registered_at"] >= t0
                               for n in self.admin("/v1/nodes")), "the node's registration")  # fmt: skip
        self._wait(lambda: self.node_metrics().get("fargpu_node_sessions") == 0, "the node's metrics")
        time.sleep(1.0)
        self.fd_baseline = self.node_fds()

    def start(self) -> None:
        self.start_redis()
        self.start_pool()
        self.start_node()

    def stop(self) -> None:
        for p in (self.node, self.pool, self.redis):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in (self.node, self.pool, self.redis):
            if p is not None:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for pid in self.workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proxy.close()

    @staticmethod
    def _wait(check: Any, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if check():
                    return
            except (httpx.HTTPError, OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up within {timeout_s:g}s")
            time.sleep(0.1)

    # --- what the checks read ----------------------------------------------------------------------------
    def admin(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        r.raise_for_status()
        return r.json()

    def node_metrics(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("fargpu_node_") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def workers(self) -> list[int]:
        """Session workers of this cluster (by their environment), whoever their parent is now."""
        mine = f"XDG_STATE_HOME={self.tmp / 'state'}".encode()
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if b"fargpu.server.worker" in (d / "cmdline").read_bytes() and mine in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
        return found

    def node_fds(self) -> int:
        assert self.node is not None
        try:
            return len(os.listdir(f"/proc/{self.node.pid}/fd"))
        except OSError:
            return -1


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
