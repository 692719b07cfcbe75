"""Scale to zero on the GPU host, in one run (bench/scale_zero_gpu.sh): a pool manager with the local node provider
and no node at all; a lease arrives, the pool starts a node server on the GPU (`fargpu server --backend cuda`), the
lease is placed on it, and a client process runs its first kernel through the stub. Then the lease is released, the
idle node is stopped, and the pool is back at zero nodes; repeated `--rounds` times.

Reported per round (wall-clock seconds from the lease request at zero nodes): the lease placed, the client's CUDA
context up, its first kernel finished; the node's start as the pool saw it; the seconds back to zero nodes; and the
proof that the client never loaded the real driver (no libcuda.so outside the stub's folder in its maps, no
/dev/nvidia* open). Where those seconds go: `breakdown_s` gives, per round, the seconds from the lease request to
each stage (STAGES below: the autoscaler asking for a node, the node process's start, imports, backend, listener,
enrolment and registration, the lease placed, the client's HELLO, its worker's start, device and HELLO_OK, the
client's context and kernel), `steps_s` the steps between them, and `breakdown_median_s` each stage's median over
the rounds; every process of the run writes its marks to OUT/timeline.log (fargpu/timeline.py). --backend sim is a
dry run of the script (no GPU: the simulated device records the launch)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fargpu import timeline

# A kernel that writes one value, as PTX (the driver compiles it for the GPU on load).
BENCH_KEY = "scale-zero-bench-key-0123456789abcdef"  # the bench's own API key, accepted for tenant "local"

PTX = r""".version 8.0
.target sm_80
.address_size 64
.visible .entry fg_scale_probe(.param .u64 out, .param .u32 v)
{
  .reg .b64 %rd<2>;
  .reg .b32 %r<2>;
  ld.param.u64 %rd1, [out];
  ld.param.u32 %r1, [v];
  cvta.to.global.u64 %rd1, %rd1;
  st.global.u32 [%rd1], %r1;
  ret;
}
"""

CLIENT = r'''
import ctypes, os, sys, time
t_start = time.time()
stub_dir = os.path.realpath(sys.argv[1])  # the maps show resolved paths (the build folder may be a link)
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, w):
    if r: print("FAIL", w, r, flush=True); sys.exit(1)
ok(cu.cuInit(0), "init"); ctx = ctypes.c_void_p()  # the stub connects here: HELLO, a worker, HELLO_OK
t_init = time.time()
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain"); ok(cu.cuCtxSetCurrent(ctx), "current")
t_ctx = time.time()
mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
ok(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(os.environ["PROBE_PTX"].encode() + b"\0")), "module")
ok(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"fg_scale_probe"), "function")
p = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(4)), "alloc")
out, v = ctypes.c_uint64(p.value), ctypes.c_uint32(0x5ca1ab1e)
params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(out), ctypes.c_void_p),
                               ctypes.cast(ctypes.byref(v), ctypes.c_void_p))
sim = os.environ.get("PROBE_SIM") == "1"  # the simulated device runs only the project's test kernels: 801 at sync
r = cu.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, None, params, None)
if not (sim and r == 801): ok(r, "launch")
r = cu.cuCtxSynchronize()
if not (sim and r == 801): ok(r, "sync")
t_kernel = time.time()
got = ctypes.c_uint32()
ok(cu.cuMemcpyDtoH_v2(ctypes.byref(got), p, ctypes.c_size_t(4)), "dtoh")
maps = open("/proc/self/maps").read().splitlines()
real = sorted({l.split()[-1] for l in maps
               if "libcuda.so" in l and not os.path.realpath(l.split()[-1]).startswith(stub_dir + "/")})
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    if target.startswith("/dev/nvidia"):
        fds.append(target)
print("RESULT", t_start, t_init, t_ctx, t_kernel, hex(got.value), ";".join(real) or "-", ";".join(fds) or "-",
      flush=True)
'''


# The breakdown of one round: each stage's first mark after the lease request, in the order a lease at zero nodes
# goes through them (fargpu/timeline.py; "client.*" are the client's own clock readings). node.enrolled is absent
# when the node reused the credential it enrolled for in an earlier round.
STAGES = [
    ("lease_request", "pool.lease_request"),  # the pool manager has the request
    ("lease_waits", "pool.lease_waits"),  # no room: it waits for a node
    ("provider_start", "autoscaler.start_node"),  # the autoscaler asks the provider for a node
    ("node_spawned", "provider.started"),  # the provider started the node server process
    ("node_exec", "node.exec"),  # that process's start, as the kernel recorded it (in 10 ms ticks: may read early)
    ("node_imported", "node.imported"),  # the node server's modules are imported, its command runs
    ("node_backend", "node.backend"),  # the backend chosen (on a GPU: a probe process initialised the driver)
    ("node_agent", "node.agent"),  # the node agent built (devices read, host page pool started)
    # The host page pool made (in the background: on a GPU node, pinned host memory from the driver, made while the
    # node registers and its first session starts); absent when it was not ready by the first kernel.
    ("node_host_pool_ready", "node.host_pool_ready"),
    ("node_listening", "node.listening"),  # its session listener is bound
    ("node_pool_target", "node.pool_target"),  # it found the pool's gRPC port (GET /v1/info)
    ("node_enrolled", "node.enrolled"),  # it enrolled (first start of this node id only)
    ("pool_node_registered", "pool.node_registered"),  # the pool recorded its registration
    ("node_registered", "node.registered"),  # the node has the pool's answer
    ("lease_placed", "pool.lease_placed"),  # the lease is placed on the node
    ("client_start", "client.start"),  # the client process runs (after the pool's 201 reached the benchmark)
    ("session_hello", "session.hello"),  # the node has the client's HELLO
    ("session_authorised", "session.authorised"),  # the pool confirmed the lease token (ValidateToken)
    ("worker_spawned", "worker.spawned"),  # the agent starts the session's worker process
    ("worker_main", "worker.main"),  # its modules imported
    ("worker_device_open", "worker.device_open"),  # it opened the device (on a GPU: cuInit)
    ("worker_hello_ok", "worker.hello_ok"),  # it sends HELLO_OK
    ("client_connected", "client.init"),  # cuInit returned in the client (connected, HELLO_OK read)
    ("context", "client.context"),  # its primary context is current
    ("first_kernel", "client.first_kernel"),  # its first kernel finished (cuCtxSynchronize returned)
]


def breakdown(marks: list[timeline.Mark], t0: float, t_end: float) -> tuple[dict[str, float | None], dict[str, float]]:
    """(seconds from `t0` to each stage's first mark in [t0, t_end], None where absent; the steps between
    consecutive stages present, in time order, as "a->b": seconds)."""
    first: dict[str, float] = {}
    for m in marks:  # (a process's start is known to 10 ms: it may read a little before the request)
        if t0 - 0.02 <= m.at <= t_end + 0.001 and m.event not in first:
            first[m.event] = m.at
    at = {name: round(first[event] - t0, 3) if event in first else None for name, event in STAGES}
    present = sorted(((t, name) for name, t in at.items() if t is not None), key=lambda x: x[0])
    steps = {f"{a}->{b}": round(tb - ta, 3) for (ta, a), (tb, b) in zip(present, present[1:], strict=False)}
    return at, steps


def median_breakdown(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, _ in STAGES:
        values = sorted(r["breakdown_s"][name] for r in rounds if r["breakdown_s"].get(name) is not None)
        out[name] = values[len(values) // 2] if values else None
    return out


async def until_zero(live: Callable[[], Awaitable[list[str]]], within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while await live():  # noqa: ASYNC110 - polling the pool over REST
        assert time.monotonic() < deadline, "the pool did not get back to zero nodes"
        await asyncio.sleep(0.1)


def gpu_info(backend: str) -> dict[str, str]:
    """The GPU's name and driver version (nvidia-smi), or the simulated device's label."""
    if backend != "cuda":
        return {"gpu": "simulated device (dry run: no GPU figure)", "driver": "simulated"}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {"gpu": "unknown", "driver": "unknown"}
    name, _, driver = q[0].rpartition(",") if q else ("unknown", "", "unknown")
    return {"gpu": name.strip(), "driver": driver.strip()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from fargpu.pool_manager.config import PoolManagerConfig
    from fargpu.pool_manager.server import PoolManager

    out = Path(args.out)
    trace = out / "timeline.log"  # every process of the run appends its marks here (fargpu/timeline.py)
    trace.unlink(missing_ok=True)
    os.environ[timeline.ENV] = str(trace)
    node_args = ["--ctx-charge", "0"] if args.backend == "sim" else []
    config = PoolManagerConfig(
        port=0, grpc_port=0, state_file=None, enrol_token="scale-zero-bench", log_level="warning",
        provider="local", local_backend=args.backend, local_node_args=node_args, local_log_dir=out / "nodes",
        min_nodes=0, max_nodes=1, node_idle_s=args.idle_s, scale_interval_s=args.scale_interval_s,
        scale_down_cooldown_s=0.0,
        heartbeat_interval_s=0.5, tenant_keys=[BENCH_KEY],
    )  # fmt: skip
    rounds: list[dict[str, Any]] = []
    async with PoolManager(config) as pm, httpx.AsyncClient(
            base_url=pm.rest_url, timeout=300, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as api:

        async def live() -> list[str]:
            return [n["node_id"] for n in (await api.get("/v1/nodes")).json() if n["state"] != "down"]

        for i in range(args.rounds):
            await until_zero(live)
            t0 = time.time()
            r = await api.post("/v1/leases", json={"vram": args.vram})
            t_placed = time.time()
            assert r.status_code == 201, r.text
            lease = r.json()
            server = lease["endpoints"][0].removeprefix("tcp://")
            env = dict(os.environ, FARGPU_SERVER=server, FARGPU_TOKEN=lease["token"], LD_LIBRARY_PATH=args.stub_dir,
                       LD_PRELOAD=str(Path(args.stub_dir) / "libcuda.so.1"),
                       PROBE_PTX=PTX, PROBE_SIM="1" if args.backend == "sim" else "0")  # fmt: skip
            for k in ("FARGPU_POOL_URL", "FARGPU_LEASE_ID"):
                env.pop(k, None)
            proc = await asyncio.create_subprocess_exec(args.python, "-c", CLIENT, args.stub_dir, env=env,
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            stdout, stderr = await proc.communicate()
            (out / f"client-{i}.log").write_bytes(stdout + stderr)
            line = next((x for x in stdout.decode().splitlines() if x.startswith("RESULT")), "")
            assert proc.returncode == 0 and line, f"client failed: {stdout.decode()[-2000:]}{stderr.decode()[-2000:]}"
            _, t_client, t_init, t_ctx, t_kernel, value, real, fds = line.split()
            for event, at in (("client.start", t_client), ("client.init", t_init), ("client.context", t_ctx),
                              ("client.first_kernel", t_kernel)):
                timeline.mark(event, "", float(at))
            r = await api.delete(f"/v1/leases/{lease['lease_id']}")  # released with the key that leased it
            assert r.status_code < 300, r.text
            t_rel = time.time()
            await until_zero(live)
            rounds.append({
                "zero_nodes_to_lease_placed_s": round(t_placed - t0, 3),
                "zero_nodes_to_context_s": round(float(t_ctx) - t0, 3),
                "zero_nodes_to_first_kernel_s": round(float(t_kernel) - t0, 3),
                "kernel_wrote": value,  # the simulated device records the launch without running it: no verdict there
                "kernel_ok": value == hex(0x5CA1AB1E) if args.backend != "sim" else None,
                "release_to_zero_nodes_s": round(time.time() - t_rel, 3), "node": lease["node_id"],
                "breakdown_s": None, "steps_s": None,
                "client_real_libcuda": real, "client_nvidia_fds": fds,
                "client_never_loaded_driver": real == "-" and fds == "-",
            })  # fmt: skip
            rounds[-1]["breakdown_s"], rounds[-1]["steps_s"] = breakdown(timeline.read(trace), t0, float(t_kernel))
            print(json.dumps(rounds[-1]), flush=True)
        metrics = (await api.get("/metrics")).text
    starts = [x for x in metrics.splitlines() if x.startswith("fargpu_pool_node_start_seconds_sum")]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": os.environ.get("FARGPU_COMMIT", "unknown"),
        "backend": args.backend,
        **gpu_info(args.backend),
        "node_idle_s": args.idle_s,
        "scale_interval_s": args.scale_interval_s,
        "rounds": rounds,
        "node_start_seconds_sum": float(starts[0].split()[-1]) if starts else None,
        "best_zero_to_first_kernel_s": min(r["zero_nodes_to_first_kernel_s"] for r in rounds),
        "breakdown_median_s": median_breakdown(rounds),  # each stage's median over the rounds
        "all_ok": all(r["kernel_ok"] is not False and r["client_never_loaded_driver"] for r in rounds),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--stub-dir", required=True, help="the folder with the stub's libcuda.so.1")
    ap.add_argument("--backend", default="cuda", help="the node servers' backend (sim: a dry run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vram", default="1G")
    ap.add_argument("--idle-s", type=float, default=2.0, help="a node idle this long is stopped")
    ap.add_argument("--scale-interval-s", type=float, default=1.0,
                    help="the autoscaler's pass interval (the pool manager's default; a new lease wakes it at once)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args))
    (Path(args.out) / "scale_zero_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"zero nodes -> first kernel: best {result['best_zero_to_first_kernel_s']} s over {len(result['rounds'])} "
          f"round(s); all ok: {result['all_ok']}")  # fmt: skip
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
