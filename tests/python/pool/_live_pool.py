"""A live one-machine pool for the paging-control tests: `fargpu pool-manager` and `fargpu server --backend sim
--pool ...` as child processes (started the way the README starts them), and clients that hold device memory
through the real stub. The node enrols with the pool's enrolment token (FARGPU_ENROL_TOKEN in both children's
environment; each test's XDG_STATE_HOME is private, see tests/python/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cuda_ctypes import PRELUDE
from e2e_helpers import free_port

from fargpu import paths

T = TypeVar("T")
ADMIN = "admin-secret-for-paging-tests"
ENROL = "enrol-secret-for-paging-tests"
NODE_ID = "sim-node-1"
MiB = 1 << 20

# Holds many small allocations and two large ones, each with its own pattern; prints FILLED and the bytes it
# holds, then for every line on stdin reads everything back and says whether every byte and address is the same.
HOLDER = PRELUDE + r'''
import hashlib
sizes = [4096 * (i % 5 + 1) + 512 * i for i in range(24)] + [8 << 20, 24 << 20]
ctx0()
bufs = []
for i, n in enumerate(sizes):
    r, p = alloc(n); ok(r, "alloc")
    data = (hashlib.sha256(str(i).encode()).digest() * (n // 32 + 1))[:n]
    ok(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(p), data, ctypes.c_size_t(n)), "htod")
    bufs.append((p, n, data))
print("FILLED", sum(sizes), flush=True)
for line in sys.stdin:
    bad = 0
    for p, n, data in bufs:
        out = ctypes.create_string_buffer(n)
        ok(cu.cuMemcpyDtoH_v2(out, ctypes.c_uint64(p), ctypes.c_size_t(n)), "dtoh")
        base, size = ctypes.c_uint64(), ctypes.c_size_t()
        ok(cu.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(p)), "range")
        if out.raw != data or base.value != p or size.value < n:
            bad += 1
    print("SAME" if bad == 0 else f"DIFFERENT {bad}", flush=True)
'''


def _key() -> dict[str, str]:
    """This machine's API key (the local key the pool manager child wrote into the test's state dir)."""
    from fargpu.pool_manager.tenants import find_api_key

    key = find_api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = 30.0, interval_s: float = 0.1) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FARGPU_SERVER", "FARGPU_TOKEN",
                                                             "FARGPU_POOL_URL", "FARGPU_ADMIN_TOKEN")}  # fmt: skip
    env["FARGPU_ENROL_TOKEN"] = ENROL
    env.update(extra)
    return env


def fargpu_argv(*args: str) -> list[str]:
    """The `fargpu` console script beside this Python (as users run it), else `python -m fargpu.cli`."""
    script = Path(sys.executable).with_name("fargpu")
    return [str(script), *args] if script.exists() else [sys.executable, "-P", "-m", "fargpu.cli", *args]


@dataclass
class Holder:
    """A client process holding device memory on the node through the stub."""

    proc: subprocess.Popen[str]
    held_bytes: int

    def check(self) -> str:
        """Makes the client's next calls (reads of everything it wrote); returns SAME or DIFFERENT n."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ChildExited(AssertionError):
    """A pool manager or node process of a LivePool exited while a test waited on it."""


@dataclass
class LivePool:
    tmp: Path
    url: str
    node_metrics_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    holders: list[Holder] = field(default_factory=list)

    # --- starting and stopping ---------------------------------------------------------------------------
    @classmethod
    def start(cls, tmp: Path, *, store_args: Sequence[str], pool_args: Sequence[str] = (),
              node_args: Sequence[str] = (), node_env: dict[str, str] | None = None) -> LivePool:  # fmt: skip
        rest, grpc_port, node_port, metrics_port = free_port(), free_port(), free_port(), free_port()
        pool = cls(tmp, f"http://127.0.0.1:{rest}", metrics_port)
        try:
            pool.procs.append(subprocess.Popen(
                fargpu_argv("pool-manager", "--port", str(rest), "--grpc-port", str(grpc_port), "--admin-token",
                            ADMIN, "--heartbeat-interval", "0.25", *store_args, *pool_args),
                env=child_env(), stdout=(tmp / "pool.log").open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
            ))  # fmt: skip
            pool.wait_json("/v1/status", lambda d: True, "the pool manager")
            pool.procs.append(subprocess.Popen(
                fargpu_argv("server", "--backend", "sim", "--listen", f"127.0.0.1:{node_port}", "--pool", pool.url,
                            "--metrics-port", str(metrics_port), "--ctx-charge", "0", *node_args),
                env=child_env(FARGPU_NODE_ID=NODE_ID, **(node_env or {})), stdout=(tmp / "node.log").open("wb"),
                stderr=subprocess.STDOUT, cwd=tmp,
            ))  # fmt: skip
            # A node registers within a second or two; the wider deadline is for a loaded 2-core CI machine.
            pool.wait_json("/v1/nodes", lambda d: any(n["node_id"] == NODE_ID for n in d), "node registration",
                           timeout_s=60.0)
        except BaseException:
            pool.stop()
            raise
        return pool

    def stop(self) -> None:
        for h in self.holders:
            h.stop()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self) -> str:
        out = []
        for name in ("pool.log", "node.log"):
            f = self.tmp / name
            if f.exists():
                out.append(f"--- {name} (tail)\n" + f.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    # --- REST --------------------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, headers=_key(), timeout=10).raise_for_status().json()

    def get_text(self, path: str) -> str:
        return httpx.get(self.url + path, headers=_key(), timeout=10).raise_for_status().text

    def wait_json(self, path: str, ok: Callable[[Any], bool], what: str, timeout_s: float = 30.0) -> Any:
        """Polls path until ok accepts it; fails at once, with the children's logs, when one of them has exited,
        and with the logs on timeout."""
        def check() -> Any:
            for p in self.procs:
                if p.poll() is not None:
                    raise ChildExited(f"a child exited ({p.args!r}) while waiting for {what}:\n{self.logs()}")
            try:
                data = self.get(path)
            except httpx.HTTPError:
                return None
            return data if ok(data) else None

        try:
            return wait_for(check, what, timeout_s)
        except ChildExited:
            raise
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None

    def admin_post(self, path: str, body: dict[str, Any] | None = None, token: str | None = ADMIN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=10)

    def lease(self, **body: Any) -> dict[str, Any]:
        r = httpx.post(self.url + "/v1/leases", json=body, headers=_key(), timeout=10)
        assert r.status_code == 201, r.text
        lease: dict[str, Any] = r.json()
        return lease

    def session_of(self, lease_id: str) -> dict[str, Any]:
        """The (one) session of the lease, once its node has reported it."""
        found: dict[str, Any] = self.wait_json(
            "/v1/sessions", lambda ss: any(s["lease_id"] == lease_id for s in ss), f"a session of {lease_id}"
        )
        return next(s for s in found if s["lease_id"] == lease_id)

    def wait_session(self, session_id: str, ok: Callable[[dict[str, Any]], bool], what: str,
                     timeout_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
        def pick(ss: list[dict[str, Any]]) -> bool:
            s = next((x for x in ss if x["session_id"] == session_id), None)
            return s is not None and ok(s)

        try:
            ss = self.wait_json("/v1/sessions", pick, what, timeout_s)
        except AssertionError as e:
            raise AssertionError(f"{e}; sessions now: {self.get('/v1/sessions')}\n{self.logs()}") from None
        return next(x for x in ss if x["session_id"] == session_id)

    # --- clients -----------------------------------------------------------------------------------------
    def hold(self, lease: dict[str, Any]) -> Holder:
        """A client on the lease's node with its token, holding memory (FILLED once this returns)."""
        env = child_env(LD_LIBRARY_PATH=f"{paths.stub_dir()}:{os.environ.get('LD_LIBRARY_PATH', '')}",
                        FARGPU_SERVER=lease["endpoints"][0].removeprefix("tcp://"), FARGPU_TOKEN=lease["token"])
        return self.start_holder([sys.executable, "-P", "-c", HOLDER], env)

    def start_holder(self, argv: list[str], env: dict[str, str]) -> Holder:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=(self.tmp / f"client-{len(self.holders)}.log").open("w"), text=True,
                                cwd="/")  # fmt: skip
        assert proc.stdout is not None
        holder = Holder(proc, 0)
        self.holders.append(holder)
        line = proc.stdout.readline().split()
        assert line[:1] == ["FILLED"], f"client said {line!r}\n{self.logs()}"
        holder.held_bytes = int(line[1])
        return holder

    # --- CLI ---------------------------------------------------------------------------------------------
    def cli(self, *args: str, admin: bool = True, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        env = child_env(FARGPU_POOL_URL=self.url, COLUMNS="250")
        if admin:
            env["FARGPU_ADMIN_TOKEN"] = ADMIN
        return subprocess.run(fargpu_argv("pool", *args), env=env, capture_output=True, text=True,
                              timeout=timeout_s, cwd=self.tmp)  # fmt: skip

    def cli_json(self, *args: str, admin: bool = True) -> Any:
        r = self.cli(*args, "--json", admin=admin)
        assert r.returncode == 0, f"fargpu pool {' '.join(args)}: rc {r.returncode}\n{r.stdout}{r.stderr}"
        return json.loads(r.stdout)

    def node_metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.node_metrics_port}/metrics", timeout=10).text


def store_args(kind: str, redis_url: str | None) -> list[str]:
    if kind == "embedded":
        return ["--memory-only"]
    assert redis_url is not None
    return ["--store", "redis", "--redis-url", redis_url, "--redis-prefix", f"t{uuid.uuid4().hex[:10]}:"]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and got == want:
            return float(value)
    return None
