#!/usr/bin/env bash
# bench/small_calls.sh OUT [--backend cuda|sim] [--rounds N] — the cost of a small synchronous call against the raw
# transport floors of the same run: the loopback TCP and unix-socket ping-pongs (bench/floors.c --rtt), then
# bench/transport.c --small (idle cuStreamSynchronize round trip, 64 B copies each way) natively and through fargpu
# over TCP (one stream), a unix socket, shared memory with the doorbell (the default) and shared memory without it
# (FARGPU_SHM_DOORBELL=0); and 2000 async 128 KiB copies over TCP with and without the frames kept for a resume
# (tcp1 and tcp1noresume: FARGPU_RESUME=off). Every part runs N times (default 3), interleaved, so a noisy
# neighbour hits all of them alike; the medians go to OUT/small_calls.json with the ratios issue 13 asks for (TCP
# sync / TCP floor, shm sync in µs). --backend sim runs on a machine without a GPU (the simulated device stands in
# for the driver: the overhead of fargpu is real, the GPU's part is not). Used by bench/transport_gpu.sh too
# (SMALL_CALLS_REUSE=build dir).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/small_calls.sh OUT [--backend cuda|sim] [--rounds N]}" && cd "$1" && pwd)
shift
BACKEND=cuda; ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
REPO=$PWD
W=/tmp/fargpu-small-calls; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
. bench/gpu_prepare.sh
gpu_prepare "${SMALL_CALLS_REUSE:-}" || exit 1
gpu_bench_env
gpu_build_transport || exit 1
gcc -O2 -std=c11 -D_GNU_SOURCE -o "$W/floors" bench/floors.c -lpthread || exit 1
TOKEN=small-calls-token
PORT=${SMALL_CALLS_PORT:-7319}
SOCK="$W/fargpu.sock"
FARGPU_TOKEN=$TOKEN "$PY" -P -m fargpu.server --backend "$BACKEND" --listen 127.0.0.1:$PORT --unix "$SOCK" \
  --metrics-port 0 >"$OUT/small_server.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null' EXIT
for i in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && [ -S "$SOCK" ] && break; sleep 0.2; done
: >"$W/none.ptx"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r of $ROUNDS"
  timeout 60 "$W/floors" --rtt >"$OUT/small_floors_$r.json" 2>>"$OUT/small_calls.err"
  timeout 60 "${NATIVE[@]}" "$W/transport" "$W/none.ptx" --small >"$OUT/small_native_$r.json" 2>>"$OUT/small_calls.err"
  for t in tcp1 tcp1noresume unix shm shmnodb; do
    ep=$SOCK; extra=(FARGPU_SHM_MB=64)
    case $t in
      tcp1) ep=127.0.0.1:$PORT; extra=(FARGPU_STREAMS=1) ;;
      tcp1noresume) ep=127.0.0.1:$PORT; extra=(FARGPU_STREAMS=1 FARGPU_RESUME=off) ;;
      unix) extra=(FARGPU_SHM_MB=0) ;;
      shmnodb) extra=(FARGPU_SHM_MB=64 FARGPU_SHM_DOORBELL=0) ;;
    esac
    timeout 60 env LD_LIBRARY_PATH="$STUB" LD_PRELOAD="$STUB/libcuda.so.1" FARGPU_SERVER="$ep" FARGPU_TOKEN=$TOKEN \
      FARGPU_PROOF_FILE="$OUT/proof-small-$t.jsonl" "${extra[@]}" "$W/transport" "$W/none.ptx" --small \
      >"$OUT/small_${t}_$r.json" 2>>"$OUT/small_calls.err" || echo "$t failed in round $r (see small_calls.err)"
  done
done
"$PY" - "$OUT" "$BACKEND" "$ROUNDS" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, backend, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def runs(name):
    docs = []
    for r in range(1, rounds + 1):
        try:
            docs.append(json.loads((out / f"small_{name}_{r}.json").read_text().strip().splitlines()[-1]))
        except (OSError, ValueError, IndexError):
            pass
    return docs
def med(docs, key):
    vals = [d[key] for d in docs if isinstance(d.get(key), (int, float))]
    return round(statistics.median(vals), 3) if vals else None
doc = {"backend": backend, "rounds": rounds, "commit": __import__("os").environ.get("FARGPU_COMMIT", "unknown"),
       "floors": {k: med(runs("floors"), k) for k in ("floor_tcp_rtt_us", "floor_unix_rtt_us")}, "clients": {}}
KEYS = ("sync_rtt_us", "htod_64b_us", "dtoh_64b_us", "async_htod_128k_GBps")
for name in ("native", "tcp1", "tcp1noresume", "unix", "shm", "shmnodb"):
    d = runs(name)
    doc["clients"][name] = {k: med(d, k) for k in KEYS} if d else None
def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None
c, f = doc["clients"], doc["floors"]
get = lambda n, k: (c.get(n) or {}).get(k)
doc["ratios"] = {
    "sync_rtt_tcp1_vs_floor": ratio(get("tcp1", "sync_rtt_us"), f["floor_tcp_rtt_us"]),
    "sync_rtt_unix_vs_floor": ratio(get("unix", "sync_rtt_us"), f["floor_unix_rtt_us"]),
    "sync_rtt_shm_vs_unix_floor": ratio(get("shm", "sync_rtt_us"), f["floor_unix_rtt_us"]),
    "sync_rtt_shm_vs_shmnodb": ratio(get("shm", "sync_rtt_us"), get("shmnodb", "sync_rtt_us")),
    "async_htod_128k_tcp1_vs_noresume": ratio(get("tcp1", "async_htod_128k_GBps"),
                                              get("tcp1noresume", "async_htod_128k_GBps")),
}
doc["targets"] = {"sync_rtt_tcp1_le_1.1x_floor": (doc["ratios"]["sync_rtt_tcp1_vs_floor"] or 99) <= 1.1,
                  "sync_rtt_shm_le_5us": (get("shm", "sync_rtt_us") or 99) <= 5.0}
(out / "small_calls.json").write_text(json.dumps(doc, indent=1) + "\n")
print(json.dumps(doc, indent=1))
EOF
