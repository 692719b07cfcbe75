"""The local provider: node servers as child processes of the pool manager, on this machine.

Each node is `fargpu server --backend BACKEND --listen HOST:0 --pool URL --metrics-port -1`, started the way the
README starts a node by hand, with `FARGPU_NODE_ID` set to a name of the form `local-N` (the lowest N not in
use, so that a restarted node reuses its enrolment credential in the state directory) and the pool's enrolment
token in `FARGPU_ENROL_TOKEN`, and the pool's gRPC address in `FARGPU_POOL_GRPC` (so that it need not ask the
pool's /v1/info for it). It listens on a port the kernel picks and registers with the pool by itself.
`stop` sends SIGTERM and, after `stop_timeout_s`, SIGKILL; `close` (the pool manager stopping) stops every node
this provider started, so that no node server outlives its pool manager. The nodes' output goes to
`<log_dir>/<node id>.log`. On a machine with a GPU, `--local-backend auto` (the default) serves it; tests use
`sim`, the simulated device."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fargpu import timeline
from fargpu.pool_manager.providers.base import ProviderError, ProviderNode, ProviderState

log = logging.getLogger("fargpu.pool_manager.providers.local")


def fargpu_command() -> list[str]:
    """The `fargpu` console script beside this Python, else `python -P -m fargpu.entry`: the console script's own
    entry (`fargpu server` starts without the pool manager's imports, which `python -m fargpu.cli` would load), and
    -P so that the working directory does not come first on the module path (in a source checkout, its `fargpu/`
    folder is not the package: the node died at import, and the lease waited for it in vain)."""
    script = Path(sys.executable).with_name("fargpu")
    if script.exists():
        return [str(script)]
    found = shutil.which("fargpu")
    return [found] if found else [sys.executable, "-P", "-m", "fargpu.entry"]


def _spawn(argv: list[str], env: dict[str, str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    # Its own session: a SIGKILL for the group takes the node's session workers with it.
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


@dataclass
class _Proc:
    node_id: str
    proc: subprocess.Popen[bytes]
    started_at: float
    stopping: bool = False


class LocalProvider:
    name = "local"

    def __init__(
        self,
        pool_url: Callable[[], str] | str,
        *,
        enrol_token: str = "",
        backend: str = "auto",
        listen_host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        stop_timeout_s: float = 10.0,
        grpc_target: Callable[[], str] | str | None = None,
    ) -> None:
        self._pool_url = pool_url
        self._grpc_target = grpc_target
        self._enrol_token = enrol_token
        self._backend = backend
        self._listen_host = listen_host
        self._extra = list(extra_args)
        self._log_dir = log_dir or Path(tempfile.gettempdir()) / f"fargpu-local-nodes-{os.getuid()}"
        self._env = env
        self._stop_timeout = stop_timeout_s
        self._procs: dict[str, _Proc] = {}

    def _url(self) -> str:
        return self._pool_url() if callable(self._pool_url) else self._pool_url

    def _reap(self) -> None:
        for node_id, p in list(self._procs.items()):
            if p.proc.poll() is not None:
                if not p.stopping:
                    log.warning("local node %s exited by itself (code %s); see %s", node_id, p.proc.returncode,
                                self._log_dir / f"{node_id}.log")  # fmt: skip
                del self._procs[node_id]

    async def list(self) -> list[ProviderNode]:
        self._reap()
        return [
            ProviderNode(
                node_id,
                ProviderState.stopping if p.stopping else ProviderState.running,
                p.started_at,
                f"pid {p.proc.pid}",
            )  # fmt: skip
            for node_id, p in sorted(self._procs.items())
        ]

    def _next_id(self) -> str:
        n = 0
        while f"local-{n}" in self._procs:
            n += 1
        return f"local-{n}"

    async def start(self) -> ProviderNode:
        self._reap()
        node_id = self._next_id()
        argv = [*fargpu_command(), "server", "--backend", self._backend, "--listen", f"{self._listen_host}:0",
                "--pool", self._url(), "--metrics-port", "-1", *self._extra]  # fmt: skip
        env = dict(self._env if self._env is not None else os.environ)
        for k in ("FARGPU_TOKEN", "FARGPU_SERVER", "LD_PRELOAD", "FARGPU_LISTEN", "FARGPU_UNIX_SOCKET"):
            env.pop(k, None)
        env["FARGPU_NODE_ID"] = node_id
        env.pop("FARGPU_POOL_GRPC", None)
        grpc_target = self._grpc_target() if callable(self._grpc_target) else self._grpc_target
        if grpc_target:  # the node need not ask the pool's /v1/info for it
            env["FARGPU_POOL_GRPC"] = grpc_target
        if self._enrol_token:
            env["FARGPU_ENROL_TOKEN"] = self._enrol_token
        try:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = (self._log_dir / f"{node_id}.log").open("ab")
        except OSError as e:
            raise ProviderError(f"cannot write node logs to {self._log_dir}: {e.strerror}; set --local-log-dir") from e
        try:
            proc = _spawn(argv, env, out)
        except OSError as e:
            raise ProviderError(f"cannot start a node server ({argv[0]}): {e.strerror}") from e
        finally:
            out.close()
        now = time.time()
        timeline.mark("provider.started", f"{node_id} pid={proc.pid}")
        self._procs[node_id] = _Proc(node_id, proc, now)
        log.info("started local node %s (pid %d, backend %s), log %s", node_id, proc.pid, self._backend,
                 self._log_dir / f"{node_id}.log")  # fmt: skip
        return ProviderNode(node_id, ProviderState.starting, now, f"pid {proc.pid}")

    async def stop(self, node_id: str) -> None:
        p = self._procs.get(node_id)
        if p is None:
            return
        p.stopping = True
        if p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(p.proc.wait), self._stop_timeout)
            except TimeoutError:
                log.warning("local node %s did not stop in %gs after SIGTERM; killing it", node_id, self._stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(p.proc.wait)
        log.info("stopped local node %s (exit code %s)", node_id, p.proc.returncode)
        self._procs.pop(node_id, None)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(n) for n in list(self._procs)), return_exceptions=True)
