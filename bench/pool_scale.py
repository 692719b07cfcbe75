"""Pool-manager scale benchmark (CPU only): 200 simulated nodes, 5,000 lease create/release cycles from
concurrent clients, placement latency p50/p99, and proof of no double booking and no lost lease.

    python bench/pool_scale.py                      # embedded store (file-backed), one pool manager
    python bench/pool_scale.py --store redis --pool-managers 2   # two pool managers on one Redis

Everything runs in this process on uvloop, over real sockets: the pool manager(s) serve REST (uvicorn) and
gRPC; every simulated node is a real `PoolLink` (the node server's gRPC client) around a simulated agent
with 1-2 GPUs; clients are asyncio tasks using httpx. With --store redis and no --redis-url, a private
redis-server is started on a free port. Clients ask with `wait_s`, so a full pool queues instead of failing.

What is checked (the run fails, exit 1, on any violation):
- no double booking, continuously: an auditor reads the pool every 100 ms and checks that no GPU's bookings
  exceed its capacity, and (embedded store, where the read is one atomic snapshot) that each GPU's bookings
  equal the sum of its active leases' allocations;
- no double booking, from the clients' side: each client records when it held which GPU bytes (from the create
  reply to the release request, inside the pool's own booking interval); a sweep over those intervals finds
  the most VRAM held at once on each GPU, which must never exceed the GPU's capacity;
- no lost lease: every created lease is visible (GET) while held and is released by its owner with 200 (not
  404 or 409: expired, lost or double-ended), and at the end no lease is active and no VRAM is booked.
Results go to bench/results/pool_scale-<date>.json (other stores: pool_scale-<date>-redis-x<N>.json; or --out).
Placement latency is measured inside the pool manager (snapshot, choice, atomic booking); the client round trip
adds HTTP and this process's own load (64 clients on the same 2 cores), so it is an upper bound."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
GiB = 1 << 30


def _ensure_fargpu() -> None:
    """Runs from a plain checkout too: builds the `fargpu` package layout from symlinks when not installed."""
    import importlib.util

    try:
        if importlib.util.find_spec("fargpu.pool_manager") is not None:
            return
    except ModuleNotFoundError:
        pass
    root = Path(tempfile.mkdtemp(prefix="fargpu-bench-path-"))
    pkg = root / "fargpu"
    pkg.mkdir()
    mapping = {"server": "server", "protocol": "protocol", "pool_manager": "pool_manager"}
    for entry in (REPO / "fargpu").iterdir():
        if entry.name not in mapping and entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, rel in mapping.items():
        (pkg / name).symlink_to(REPO / rel)
    sys.path.insert(0, str(root))
    for mod in [m for m in sys.modules if m == "fargpu" or m.startswith("fargpu.")]:
        del sys.modules[mod]


_ensure_fargpu()

import httpx  # noqa: E402

from fargpu.pool_manager.config import PoolManagerConfig  # noqa: E402
from fargpu.pool_manager.server import PoolManager  # noqa: E402
from fargpu.server.agent_api import DeviceInfo, SessionInfo  # noqa: E402
from fargpu.server.pool_link import LeaseTokenAuth, PoolLink  # noqa: E402


class SimAgent:
    """A simulated node agent: fixed GPUs, no sessions (the benchmark measures the control plane)."""

    backend = "sim"

    def __init__(self, index: int, gpu_gib: list[int]) -> None:
        self.endpoint = f"10.{index // 250}.{index % 250}.1:7100"
        self._devices = [
            DeviceInfo(i, "Simulated GPU", f"GPU-{index}-{i}", g * GiB, g * GiB, 0.0) for i, g in enumerate(gpu_gib)
        ]
        self.auth = LeaseTokenAuth()

    def sessions(self) -> list[SessionInfo]:
        return []

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    async def read_devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    async def end_lease(self, lease_id: str, reason: str) -> int:
        return 0

    async def drain(self) -> None:
        return None


@dataclass
class Results:
    client_latency_s: list[float] = field(default_factory=list)
    server_placement_s: list[float] = field(default_factory=list)
    holds: list[tuple[float, float, str, int, int]] = field(default_factory=list)  # t0, t1, node, gpu, bytes
    created: int = 0
    rejected: int = 0
    lost: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    audits: int = 0
    audit_violations: list[str] = field(default_factory=list)
    peak_booked_fraction: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: run scripts/setup_redis.sh")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def _commit() -> str:
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    if git.returncode != 0:
        return "uncommitted"
    return git.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(_quantile(values, 0.50) * 1e3, 3),
        "p90": round(_quantile(values, 0.90) * 1e3, 3),
        "p99": round(_quantile(values, 0.99) * 1e3, 3),
        "max": round(max(values) * 1e3, 3) if values else float("nan"),
        "mean": round(statistics.fmean(values) * 1e3, 3) if values else float("nan"),
    }


async def _audit_loop(pm: PoolManager, res: Results, caps: dict[tuple[str, int], int], exact: bool) -> None:
    total = sum(caps.values())
    while True:
        await asyncio.sleep(0.1)
        await _audit(pm, res, caps, exact, total)


async def _audit(
    pm: PoolManager, res: Results, caps: dict[tuple[str, int], int], exact: bool, total: int
) -> dict[tuple[str, int], int]:
    view = await pm.store.placement_view()  # capacity and bookings, cheaply, on both stores
    booked = {(n.node_id, g): b for n in view for g, b in n.reserved.items() if b}
    res.audits += 1
    for key, b in booked.items():
        if b > caps[key]:
            res.audit_violations.append(f"GPU {key} booked {b} > capacity {caps[key]}")
    if exact:
        held: dict[tuple[str, int], int] = defaultdict(int)
        for lease in await pm.store.list_leases():
            for a in lease.allocs:
                held[(lease.node_id, a.gpu)] += a.vram_bytes
        if dict(held) != booked:
            res.audit_violations.append("bookings differ from the active leases' allocations")
    res.peak_booked_fraction = max(res.peak_booked_fraction, sum(booked.values()) / total if total else 0.0)
    return booked


async def _client(
    api: list[httpx.AsyncClient], todo: list[int], rng: random.Random, res: Results, hold_ms: float
) -> None:
    while todo:
        todo.pop()
        client = rng.choice(api)
        gpus = rng.choices([1, 2], weights=[85, 15])[0]
        vram = rng.randint(4, 20) * GiB
        t0 = time.perf_counter()
        r = await client.post("/v1/leases", json={"vram_bytes": vram, "gpus": gpus, "ttl_s": 300, "wait_s": 30})
        res.client_latency_s.append(time.perf_counter() - t0)
        if r.status_code == 503:
            res.rejected += 1
            continue
        if r.status_code != 201:
            res.errors.append(f"create: {r.status_code} {r.text}")
            continue
        lease = r.json()
        res.created += 1
        held_from = time.monotonic()
        if rng.random() < 0.1:
            got = await rng.choice(api).get(f"/v1/leases/{lease['lease_id']}")
            if got.status_code != 200 or got.json()["state"] != "active":
                res.lost.append(f"{lease['lease_id']}: not visible while held ({got.status_code})")
        if hold_ms:
            await asyncio.sleep(rng.uniform(0, hold_ms) / 1e3)
        held_to = time.monotonic()
        r = await rng.choice(api).delete(
            f"/v1/leases/{lease['lease_id']}"
        )
        if r.status_code != 200:
            res.lost.append(f"{lease['lease_id']}: release answered {r.status_code} {r.text}")
        for a in lease["allocs"]:
            res.holds.append((held_from, held_to, lease["node_id"], a["gpu"], a["vram_bytes"]))


def _sweep_max_held(res: Results, caps: dict[tuple[str, int], int]) -> tuple[list[str], float]:
    """Most VRAM the clients held at once per GPU, from their own timestamps; lists GPUs over capacity."""
    events: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for t0, t1, node, gpu, b in res.holds:
        events[(node, gpu)].append((t0, b))
        events[(node, gpu)].append((t1, -b))
    over, peak = [], 0.0
    for key, evs in events.items():
        cur = best = 0
        for _, delta in sorted(evs, key=lambda e: (e[0], e[1])):  # releases first at equal times
            cur += delta
            best = max(best, cur)
        peak = max(peak, best / caps[key])
        if best > caps[key]:
            over.append(f"GPU {key}: clients held {best} bytes at once, capacity {caps[key]}")
    return over, peak


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="fargpu-bench-"))
    redis_proc = None
    redis_url = args.redis_url
    if args.store == "redis" and not redis_url:
        redis_proc, redis_url = _start_redis(tmp)
    if args.store == "embedded" and args.pool_managers != 1:
        raise SystemExit("the embedded store serves one pool manager; use --store redis for several")
    managers: list[PoolManager] = []
    nodes_proc: asyncio.subprocess.Process | None = None
    res = Results()
    enrol_token = secrets.token_urlsafe(24)  # given to the nodes through FARGPU_ENROL_TOKEN
    try:
        prefix = f"bench{rng.randrange(1 << 30)}:"
        for i in range(args.pool_managers):
            cfg = PoolManagerConfig(
                port=0,
                grpc_port=0,
                store=args.store,
                redis_url=redis_url or "",
                redis_prefix=prefix,
                state_file=tmp / "pool-state.json",
                enrol_token=enrol_token,  # not the state directory's file: the benchmark leaves no trace
                heartbeat_interval_s=2.0,
                heartbeat_timeout_s=30.0,
                stale_after_s=None,  # heartbeats every 2 s here: placement judges nodes by their state only
                local_key=False,  # no local key file either: a tenant and key made below
                log_level="warning",
            )
            pm = PoolManager(cfg)
            await pm.start()
            pm.service.on_placement = res.server_placement_s.append
            managers.append(pm)
            del i
        gpu_layout = [[rng.choice([16, 24, 24, 48]) for _ in range(rng.choice([1, 1, 2]))] for _ in range(args.nodes)]
        caps = {(f"sim-{i:04d}", g): size * GiB for i, sizes in enumerate(gpu_layout) for g, size in enumerate(sizes)}
        t_reg = time.perf_counter()
        # The simulated nodes live in a child process, as nodes live on other machines: their gRPC clients
        # must not compete with this process's HTTP clients for one event loop.
        nodes_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--nodes-worker",
            json.dumps({"targets": [pm.grpc_target for pm in managers], "layout": gpu_layout}),
            stdout=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                "FARGPU_ENROL_TOKEN": enrol_token,
            },
        )
        assert nodes_proc.stdout is not None
        line = await asyncio.wait_for(nodes_proc.stdout.readline(), 60)
        if line.strip() != b"registered":
            raise SystemExit(f"the simulated nodes did not register: {line!r}")
        registration_s = time.perf_counter() - t_reg

        # One small connection pool per client and pool manager: one shared pool of many connections costs
        # httpx more CPU than the pool manager spends on a request.
        await managers[0].service.put_tenant("bench")
        _, key = await managers[0].service.create_api_key("bench")
        auth = {"Authorization": f"Bearer {key}"}
        apis = [[httpx.AsyncClient(base_url=pm.rest_url, timeout=60, headers=auth) for pm in managers]
                for _ in range(args.clients)]  # fmt: skip
        exact = args.store == "embedded"
        total_cap = sum(caps.values())
        auditor = asyncio.create_task(_audit_loop(managers[0], res, caps, exact))
        todo = list(range(args.cycles))
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(api, todo, random.Random(rng.random()), res, args.hold_ms) for api in apis))
        elapsed = time.perf_counter() - t0
        auditor.cancel()
        final = await _audit(managers[0], res, caps, True, total_cap)
        for api in apis:
            for c in api:
                await c.aclose()
        leftover = await managers[0].store.list_leases()
        over, client_peak = _sweep_max_held(res, caps)
        conflicts = sum(pm.service.metrics.placement_conflicts._value.get() for pm in managers)
        violations = res.audit_violations + over
        lost = res.lost + [f"{x.lease_id}: still active at the end" for x in leftover]
        if final:
            violations.append(f"VRAM still booked at the end: {sum(final.values())} bytes")
        return {
            "benchmark": "pool_scale",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "host": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "config": {
                "store": args.store,
                "pool_managers": args.pool_managers,
                "nodes": args.nodes,
                "gpus": len(caps),
                "vram_total_gib": round(total_cap / GiB),
                "cycles": args.cycles,
                "clients": args.clients,
                "hold_ms_max": args.hold_ms,
                "seed": args.seed,
            },
            "node_registration_s": round(registration_s, 3),
            "elapsed_s": round(elapsed, 3),
            "cycles_per_s": round(args.cycles / elapsed, 1),
            "created": res.created,
            "rejected_503": res.rejected,
            "errors": res.errors[:20],
            "placement_latency_ms": {
                "server": _ms(res.server_placement_s),
                "client_create_round_trip": _ms(res.client_latency_s),
            },
            "placement_conflicts_retried": conflicts,
            "peak_booked_fraction": {
                "pool_audit": round(res.peak_booked_fraction, 3),
                "busiest_gpu_clients_view": round(client_peak, 3),
            },
            "audits": res.audits,
            "double_booking_violations": violations[:20],
            "lost_leases": lost[:20],
            "ok": not violations and not lost and not res.errors and res.created + res.rejected == args.cycles,
        }
    finally:
        if nodes_proc is not None and nodes_proc.returncode is None:
            nodes_proc.terminate()
            await nodes_proc.wait()
        for pm in managers:
            await pm.stop()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


async def _nodes_worker(spec: dict[str, Any]) -> None:
    """Child process: runs the simulated nodes (real PoolLinks), says "registered", runs until terminated."""
    targets: list[str] = spec["targets"]
    links = [
        PoolLink(
            SimAgent(i, sizes), targets[i % len(targets)], node_id=f"sim-{i:04d}", retry_s=0.2, persist_credential=False
        )
        for i, sizes in enumerate(spec["layout"])
    ]
    await asyncio.gather(*(link.start(wait_registered_s=60) for link in links))
    if not all(link.registered.is_set() for link in links):
        print("not every simulated node registered", flush=True)
        return
    print("registered", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--nodes-worker"]:
        import uvloop

        uvloop.run(_nodes_worker(json.loads(argv[1])))
        return 0
    p = argparse.ArgumentParser(description="fargpu pool-manager scale benchmark")
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--cycles", type=int, default=5000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--hold-ms", type=float, default=20.0, help="each client holds a lease up to this long")
    p.add_argument("--store", choices=["embedded", "redis"], default="embedded")
    p.add_argument("--redis-url", default=None, help="default: start a private redis-server")
    p.add_argument("--pool-managers", type=int, default=1)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    variant = "" if args.store == "embedded" else f"-{args.store}-x{args.pool_managers}"
    out = args.out or REPO / "bench" / "results" / f"pool_scale-{dt.date.today().isoformat()}{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["placement_latency_ms"]
    print(
        f"pool_scale: {result['config']['nodes']} nodes, {result['config']['cycles']} cycles, "
        f"{result['config']['clients']} clients, {result['config']['store']} store "
        f"x{result['config']['pool_managers']}: "
        f"{result['cycles_per_s']} cycles/s; placement p50 {lat['server']['p50']} ms p99 {lat['server']['p99']} ms "
        f"(client round trip p50 {lat['client_create_round_trip']['p50']} ms p99 "
        f"{lat['client_create_round_trip']['p99']} ms); double booking: {len(result['double_booking_violations'])}, "
        f"lost leases: {len(result['lost_leases'])} -> {'OK' if result['ok'] else 'FAILED'}; wrote {out}"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
