"""The fault-injection suite: under load from several stub clients (simulated device), it breaks the cluster
(cluster.py) once per round and checks, after each fault, that nothing leaked or was lost and nobody hung.

    python tests/faults/faultsuite.py --seed 7 --out faults.json            # CI: one round per fault kind
    python tests/faults/faultsuite.py --seed 7 --clients 32 --duration 600  # the soak (scripts/soak.sh)

Faults (kinds): kill -9 of a client, a session worker, the node server, the pool manager or Redis (each restarted
after a short pause, as a supervisor would; and once the pool manager for 13 s, past the clients' 10 s lease TTL,
while a client runs through it), every data connection cut at once (the node's data port is behind
a proxy), and SIGSTOP of the node server, the pool manager or Redis for 1-3 s. A seeded RNG chooses the order of
kinds (CI: each once; soak: at random), the moment in the round, the target and the pauses, so a run is replayed
from its seed (the schedule is the same; process timing is not).

Each client is the real stub leasing for itself (FARGPU_POOL_URL, end_with_sessions, TTL 10 s, the local key of
the cluster's state dir): it allocates, then copies a pattern to the device and back several times and compares.
Outcomes: ok; cuda_error (a CUDA call failed: the stub turned the fault into an error, as it should); killed (a
fault killed it); and the failures: wrong (data differed), hang (no exit within `--client-bound` s), crash
(anything else).

After each round (clients finished, the load stopped) the checks, each polled until it holds or its bound passes:
- no leak on the node: no sessions, no VRAM used, resident or paged (pinned host pool) per its /metrics, no
  session worker process left (found by environment, so orphans count), its open fds back to its baseline (+4);
- no lease lost or double-booked: each GPU's booking equals the sum of the active leases on it and fits the GPU,
  and once the clients are gone, no active lease remains (each ended with its session, its release, or its TTL);
- every client finished within the bound with ok or cuda_error (or was one the fault killed); a client that was
  connected before a fault of the control plane only (pool manager or Redis killed or stopped) finished ok (its
  lease was not lost); at least one client of the run was ok.
The JSON summary: seed, faults injected by kind, client outcomes, each check's passes and failures (with what
was seen), and the run's wall time. Exit code 0 when everything held."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Cluster  # noqa: E402

# Faults of the control plane only: a session connected before one of these must finish correctly (its lease must
# not be lost); clients that start during one may fail to get a lease, with a CUDA error.
# kill_pool_long keeps the pool manager away past the clients' lease TTL (10 s), with a client running throughout.
CONTROL_PLANE = {"kill_pool", "kill_pool_long", "kill_redis", "stop_pool", "stop_redis"}
KINDS = ["kill_client", "kill_worker", "kill_node", "kill_pool", "kill_pool_long", "kill_redis", "cut_connections",
         "stop_node", "stop_pool", "stop_redis"]  # fmt: skip
LONG_OUTAGE_S = 13.0

CLIENT = r'''
import ctypes, sys, time
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0:
        print(f"CUDAERR {what} {r}", flush=True); sys.exit(3)
ok(cu.cuInit(0), "cuInit")
ctx = ctypes.c_void_p()
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0), "retain")
ok(cu.cuCtxSetCurrent(ctx), "setcurrent")
n = 1 << 20
p = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(n)), "alloc")
print("CONNECTED", time.time(), flush=True)
for i in range(ITERS):
    data = bytes([(i * 7 + j) & 0xFF for j in range(256)]) * (n // 256)
    ok(cu.cuMemcpyHtoD_v2(p, data, ctypes.c_size_t(n)), "htod")
    out = ctypes.create_string_buffer(n)
    ok(cu.cuMemcpyDtoH_v2(out, p, ctypes.c_size_t(n)), "dtoh")
    if out.raw != data:
        print("WRONG", i, flush=True); sys.exit(4)
    time.sleep(0.05)
ok(cu.cuMemFree_v2(p), "free")
print("OK", flush=True)
'''


@dataclass
class Client:
    proc: subprocess.Popen[str]
    started: float
    round_fault: tuple[str, float] | None = None  # (kind, wall time it began) of the round's fault, once injected
    killed_by_fault: bool = False
    outcome: str = ""
    ran_s: float = 0.0


@dataclass
class Summary:
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, held: bool, seen: str) -> None:
        c = self.checks.setdefault(name, {"passed": 0, "failed": 0, "failures": []})
        c["passed" if held else "failed"] += 1
        if not held:
            c["failures"].append(seen)


class Suite:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.cluster = Cluster(tmp)
        self.summary = Summary(args.seed)
        self.clients: list[Client] = []
        self.lock = threading.Lock()
        self.loading = False
        self.fault: tuple[str, float] | None = None
        self.stub_dir = self._stub_dir()

    @staticmethod
    def _stub_dir() -> str:
        from fargpu import paths

        return str(paths.stub_dir())

    # --- load --------------------------------------------------------------------------------------------
    def _client_env(self) -> dict[str, str]:
        return dict(self.cluster.env, LD_LIBRARY_PATH=self.stub_dir, FARGPU_POOL_URL=self.cluster.url,
                    FARGPU_VRAM="8M", FARGPU_LEASE_TTL="10")  # fmt: skip

    def _launch(self, iters: int | None = None) -> Client:
        code = CLIENT.replace("ITERS", str(iters or self.args.iters))
        p = subprocess.Popen([sys.executable, "-P", "-c", code], env=self._client_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=self.cluster.tmp)  # fmt: skip
        c = Client(p, time.monotonic())
        with self.lock:
            self.clients.append(c)
        return c

    def _slot(self) -> None:
        """One client after another while the load is on; each waited for within the bound."""
        while self.loading:
            c = self._launch()
            self._finish(c)
            if c.outcome == "cuda_error":
                time.sleep(0.2)  # no lease now (the pool is away): do not spin

    def _finish(self, c: Client) -> None:
        try:
            out, err = c.proc.communicate(timeout=max(0.1, self.args.client_bound - (time.monotonic() - c.started)))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            out, err = c.proc.communicate()
            c.outcome = "hang"
        else:
            rc = c.proc.returncode
            if c.killed_by_fault and rc == -signal.SIGKILL:
                c.outcome = "killed"
            elif rc == 0 and "OK" in out:
                c.outcome = "ok"
                if self._connected_before_control_fault(out):
                    self.summary.check("a session connected before a control-plane fault finishes correctly", True,
                                       "")  # fmt: skip
            elif rc == 3 and "CUDAERR" in out:
                c.outcome = "cuda_error"
                lost = self._lost_lease(c, out)
                if lost:
                    self.summary.check("a session connected before a control-plane fault finishes correctly", False,
                                       f"{lost}: {out[-200:]} {err[-600:]}")  # fmt: skip
            elif rc == 4:
                c.outcome = "wrong"
            else:
                c.outcome = "crash"
        c.ran_s = time.monotonic() - c.started
        if c.outcome in ("hang", "wrong", "crash"):
            self.summary.check("client finishes correctly or with a CUDA error, within the bound", False,
                               f"{c.outcome}: rc {c.proc.returncode}: {out[-300:]} {err[-600:]}")  # fmt: skip
        self.summary.clients[c.outcome] += 1

    def _lost_lease(self, c: Client, out: str) -> str:
        """Why a CUDA error of this client means a lost lease ("" if it does not): it was connected before a
        control-plane fault began, and only the control plane was broken."""
        return f"connected before {self.fault[0]}, then failed" if self._connected_before_control_fault(out) and \
            self.fault else ""

    def _connected_before_control_fault(self, out: str) -> bool:
        fault = self.fault
        if fault is None or fault[0] not in CONTROL_PLANE:
            return False
        return any(line.startswith("CONNECTED ") and float(line.split()[1]) < fault[1] for line in out.splitlines())

    # --- faults ------------------------------------------------------------------------------------------
    def _kill_restart(self, proc: subprocess.Popen[bytes] | None, restart: Any, pause_s: float | None = None) -> None:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        time.sleep(self.rng.uniform(0.2, 1.5) if pause_s is None else pause_s)
        restart()

    def _stop_cont(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        proc.send_signal(signal.SIGSTOP)
        time.sleep(self.rng.uniform(1.0, 3.0))
        proc.send_signal(signal.SIGCONT)

    def inject(self, kind: str) -> str:
        cl = self.cluster
        if kind == "kill_client":
            with self.lock:
                live = [c for c in self.clients if c.proc.poll() is None]
            if not live:
                return "no client was running"
            victim = self.rng.choice(live)
            victim.killed_by_fault = True
            victim.proc.kill()
            return f"killed client {victim.proc.pid}"
        if kind == "kill_worker":
            workers = sorted(cl.workers())
            if not workers:
                return "no worker was running"
            pid = self.rng.choice(workers)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return f"worker {pid} had exited already"
            return f"killed worker {pid}"
        if kind == "kill_node":
            self._kill_restart(cl.node, cl.start_node)
        elif kind == "kill_pool":
            self._kill_restart(cl.pool, cl.start_pool)
        elif kind == "kill_pool_long":
            self._kill_restart(cl.pool, cl.start_pool, LONG_OUTAGE_S)
        elif kind == "kill_redis":
            self._kill_restart(cl.redis, cl.start_redis)
        elif kind == "cut_connections":
            return f"cut {cl.proxy.cut()} connection(s)"
        elif kind == "stop_node":
            self._stop_cont(cl.node)
        elif kind == "stop_pool":
            self._stop_cont(cl.pool)
        elif kind == "stop_redis":
            self._stop_cont(cl.redis)
        return kind

    # --- checks ------------------------------------------------------------------------------------------
    def _poll(self, name: str, bound_s: float, probe: Any) -> None:
        """Polls `probe()` -> (held, what was seen) until it holds or `bound_s` passes; records the check."""
        deadline = time.monotonic() + bound_s
        seen = ""
        while True:
            try:
                held, seen = probe()
            except Exception as e:  # a component still coming back: keep polling within the bound
                held, seen = False, f"{type(e).__name__}: {e}"
            if held or time.monotonic() > deadline:
                self.summary.check(name, held, seen)
                return
            time.sleep(0.25)

    def _node_clean(self) -> tuple[bool, str]:
        m = self.cluster.node_metrics()
        keys = ("fargpu_node_sessions", "fargpu_node_vram_used_bytes", "fargpu_node_vram_resident_bytes",
                "fargpu_node_vram_paged_bytes")  # fmt: skip
        vals = {k: m.get(k, -1.0) for k in keys}
        return all(v == 0 for v in vals.values()), json.dumps(vals)

    def _no_workers(self) -> tuple[bool, str]:
        w = self.cluster.workers()
        return not w, f"workers left: {w}"

    def _fds(self) -> tuple[bool, str]:
        n, base = self.cluster.node_fds(), self.cluster.fd_baseline
        return 0 <= n <= base + 4, f"node fds {n}, baseline {base}"

    def _bookings(self) -> tuple[bool, str]:
        nodes = self.cluster.admin("/v1/nodes")
        leases = self.cluster.admin("/v1/leases")
        held: Counter[tuple[str, str]] = Counter()
        for lease in leases:
            for a in lease["allocs"]:
                held[(lease["node_id"], str(a["gpu"]))] += a["vram_bytes"]
        booked = {(n["node_id"], str(g)): b for n in nodes for g, b in n["reserved"].items() if b}
        caps = {(n["node_id"], str(g["index"])): g["total_bytes"] for n in nodes for g in n["gpus"]}
        fits = all(b <= caps.get(k, 0) for k, b in booked.items())
        return booked == dict(held) and fits, f"booked {booked}, held by active leases {dict(held)}"

    def _no_active_leases(self) -> tuple[bool, str]:
        active = [(x["lease_id"], x["label"]) for x in self.cluster.admin("/v1/leases")]
        return not active, f"active leases: {active}"

    def check_round(self) -> None:
        s = self.summary
        self._poll("no session, VRAM or pinned memory left on the node", 30, self._node_clean)
        self._poll("no session worker left", 30, self._no_workers)
        self._poll("node fds back to the baseline", 30, self._fds)
        self._poll("bookings equal the active leases and fit", 30, self._bookings)
        # The longest way a lease ends: its client was killed while no one could hear (TTL 10 s + sweep).
        self._poll("no lease left once its client is gone", 45, self._no_active_leases)
        del s

    # --- run ---------------------------------------------------------------------------------------------
    def run_round(self, kind: str, index: int) -> None:
        t0 = time.monotonic()
        self.clients = []
        self.loading = True
        slots = [threading.Thread(target=self._slot, daemon=True) for _ in range(self.args.clients)]
        long: list[Client] = []
        if kind == "kill_pool_long":  # a session that runs through the whole outage and past its lease's TTL
            iters = int((LONG_OUTAGE_S + self.args.window + 8) / 0.06)
            long.append(self._launch(iters))
            slots.append(threading.Thread(target=lambda: self._finish(long[0]), daemon=True))
        for t in slots:
            t.start()
        at = self.rng.uniform(1.0, max(1.5, self.args.window - 1.0))
        time.sleep(at)
        self.fault = (kind, time.time())
        what = self.inject(kind)
        self.summary.faults[kind] += 1
        time.sleep(max(0.0, self.args.window - at))
        self.loading = False
        for t in slots:
            t.join(self.args.client_bound + 30)
        self.check_round()
        self.fault = None
        outcomes = Counter(c.outcome for c in self.clients)
        info = {"round": index, "fault": kind, "at_s": round(at, 2), "what": what, "clients": dict(outcomes),
                "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        if long:
            info["long_client"] = {"outcome": long[0].outcome, "ran_s": round(long[0].ran_s, 1)}
        self.summary.rounds.append(info)
        print(f"round {index}: {kind} at {at:.1f}s ({what}); clients {dict(outcomes)}; "
              f"{time.monotonic() - t0:.1f}s", flush=True)

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.cluster.start()
        try:
            index = 0
            if self.args.duration:
                while time.monotonic() - t0 < self.args.duration:
                    self.run_round(self.rng.choice(KINDS), index)
                    index += 1
            else:
                kinds = KINDS * self.args.rounds_per_kind
                self.rng.shuffle(kinds)
                for index, kind in enumerate(kinds):
                    self.run_round(kind, index)
        finally:
            self.cluster.stop()
        s = self.summary
        s.check("at least one client finished correctly", s.clients["ok"] > 0, json.dumps(dict(s.clients)))
        held = all(c["failed"] == 0 for c in s.checks.values())
        return {
            "seed": s.seed, "held": held, "seconds": round(time.monotonic() - t0, 1),
            "clients_at_once": self.args.clients, "faults": dict(s.faults), "clients": dict(s.clients),
            "checks": s.checks, "rounds": s.rounds,
            "replay": f"python tests/faults/faultsuite.py --seed {s.seed} --clients {self.args.clients} "
                      + (f"--duration {self.args.duration}" if self.args.duration
                         else f"--rounds-per-kind {self.args.rounds_per_kind}"),
        }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("FARGPU_FAULT_SEED", "1")))
    ap.add_argument("--clients", type=int, default=3, help="clients running at once")
    ap.add_argument("--iters", type=int, default=12, help="copy round trips per client")
    ap.add_argument("--window", type=float, default=5.0, help="seconds of load per round")
    ap.add_argument("--client-bound", type=float, default=60.0, help="seconds a client may take at most")
    ap.add_argument("--rounds-per-kind", type=int, default=1)
    ap.add_argument("--duration", type=float, default=0.0, help="soak: random kinds for this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's folder (logs) afterwards")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fargpu-faults-"))
    result = Suite(args, tmp).run()
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("seed", "held", "seconds", "faults", "clients")}, sort_keys=True))
    if not result["held"]:
        print(text, file=sys.stderr)
        print(f"logs kept in {tmp}", file=sys.stderr)
    elif not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if result["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
