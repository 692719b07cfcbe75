"""Fixtures of the pool-manager tests: a real redis-server per test session (on a free port, in a temporary
folder), both store implementations behind one parametrized fixture, a hand-driven clock, and pool managers
running in-process or in a background thread (for code that runs its own event loop, like the CLI)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _devpath import ensure_importable  # noqa: E402

ensure_importable()

from fargpu.pool_manager.config import PoolManagerConfig  # noqa: E402
from fargpu.pool_manager.models import GpuInfo  # noqa: E402
from fargpu.pool_manager.server import PoolManager  # noqa: E402
from fargpu.pool_manager.service import PoolService  # noqa: E402
from fargpu.pool_manager.service_core import ServiceConfig  # noqa: E402
from fargpu.pool_manager.store import Store  # noqa: E402
from fargpu.pool_manager.store_embedded import EmbeddedStore  # noqa: E402
from fargpu.pool_manager.store_redis import RedisStore  # noqa: E402

GiB = 1 << 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run scripts/setup_redis.sh")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


@dataclass
class StoreKit:
    """Makes stores of one kind on one backing (a state file or a Redis key prefix), for restart tests."""

    kind: str
    tmp: Path
    redis_url: str | None
    clock: FakeClock
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}:")
    opened: list[Store] = field(default_factory=list)

    async def new(self) -> Store:
        store: Store
        if self.kind == "embedded":
            store = EmbeddedStore(self.tmp / "pool-state.json", clock=self.clock)
        else:
            assert self.redis_url is not None
            store = RedisStore(self.redis_url, prefix=self.prefix)
        await store.open()
        self.opened.append(store)
        return store

    async def reopen(self, old: Store) -> Store:
        """Closes `old` (as a stopping pool manager would) and opens a fresh store on the same backing."""
        await old.close()
        self.opened.remove(old)
        return await self.new()


@pytest.fixture(params=["embedded", "redis"])
async def store_kit(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[StoreKit]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    kit = StoreKit(request.param, tmp_path, url, clock)
    yield kit
    for s in kit.opened:
        await s.close()


@pytest.fixture
async def store(store_kit: StoreKit) -> Store:
    return await store_kit.new()


def gpus(*sizes_gib: float) -> list[GpuInfo]:
    return [
        GpuInfo(index=i, name="sim", uuid=f"GPU-{i}", total_bytes=int(s * GiB), free_bytes=int(s * GiB))
        for i, s in enumerate(sizes_gib)
    ]


@pytest.fixture
async def service(store: Store, clock: FakeClock) -> AsyncIterator[PoolService]:
    svc = PoolService(store, ServiceConfig(heartbeat_timeout_s=10.0), clock=clock)
    await svc.start(background=False)
    yield svc
    await svc.stop()


def pm_config(**kw: object) -> PoolManagerConfig:
    base: dict[str, object] = dict(
        port=0, grpc_port=0, state_file=None, admin_token="admin-secret", log_level="warning", stale_after_s=None
    )
    base.update(kw)
    return PoolManagerConfig(**base)  # type: ignore[arg-type]


class ThreadedPool:
    """A pool manager on its own event loop in a background thread (for callers that run asyncio.run)."""

    def __init__(self, config: PoolManagerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.pm: PoolManager | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedPool:
        self._thread.start()
        self.pm = PoolManager(self.config)
        self.call(self.pm.start())
        return self

    def call(self, coro: Awaitable[object]) -> object:
        async def wrap() -> object:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(30)

    def stop(self) -> None:
        if self.pm is not None:
            self.call(self.pm.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        assert self.pm is not None
        return self.pm.rest_url


@pytest.fixture
def threaded_pool() -> Iterator[Callable[..., ThreadedPool]]:
    started: list[ThreadedPool] = []

    def make(**kw: object) -> ThreadedPool:
        # Nodes these tests register in-process never heartbeat: keep them up however slow the machine is (under
        # load, three CLI runs took longer than the default 10 s and the node was marked down mid-test).
        kw.setdefault("heartbeat_timeout_s", 3600.0)
        tp = ThreadedPool(pm_config(**kw)).start()
        started.append(tp)
        return tp

    yield make
    for tp in started:
        tp.stop()


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that must import the same fargpu as these tests."""
    import fargpu

    env = dict(os.environ)
    root = str(Path(fargpu.__file__).parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --- shared by the node-link tests (enrolment, pool link, paging link) ------------------------------------------
async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def fast(**kw: object) -> dict[str, object]:
    return dict(heartbeat_interval_s=0.05, command_wait_s=0.05, sweep_interval_s=0.05, **kw)


@pytest.fixture(params=["embedded", "redis"])
def store_args(request: pytest.FixtureRequest) -> dict[str, object]:
    if request.param == "embedded":
        return {}
    url = request.getfixturevalue("redis_url")
    return dict(store="redis", redis_url=url, redis_prefix=f"t{uuid.uuid4().hex[:10]}:")


# --- API keys -----------------------------------------------------------------------------------------------
def key_headers() -> dict[str, str]:
    """Authorization with this machine's API key (the local key a pool manager wrote into the test's state dir)."""
    from fargpu.pool_manager.tenants import find_api_key

    key = find_api_key()
    assert key, "no API key: start a pool manager first (it writes the local key)"
    return {"Authorization": f"Bearer {key}"}


async def tenant_headers(service: PoolService, tenant: str = "t1", **quota: int | None) -> dict[str, str]:
    """Creates `tenant` (with `quota`: vram_quota_bytes, max_leases) and a key; returns its Authorization header."""
    await service.put_tenant(tenant, quota.get("vram_quota_bytes"), quota.get("max_leases"))
    _, key = await service.create_api_key(tenant)
    return {"Authorization": f"Bearer {key}"}
