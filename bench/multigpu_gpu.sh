#!/usr/bin/env bash
# bench/multigpu_gpu.sh OUT [--backend cuda|sim] [--quick] — issue 17's proof run, one command on a host with 2+ GPUs.
# Builds the native parts (host gcc, CUDA headers), starts a node server on the GPUs (TCP on loopback: the remote
# case; a static token, so every client process is a session of one lease and sees both GPUs), then natively and
# through fargpu in the same run: cuMemcpyPeer bandwidth each way between GPU 0 and 1 (bench/multigpu_peer.py), a
# torch.distributed NCCL all-reduce across the 2 GPUs, one process per GPU (bus bandwidth per size), and 2-GPU DDP
# training steps (samples/s) (bench/multigpu_torch.py). Through fargpu each process is its own session; NCCL's
# buffers travel between them by CUDA IPC brokered by the node. Every remote client writes a proof file (it never
# loaded the real driver). A failing part is recorded and the rest goes on. Writes OUT/multigpu_gpu.json
# (bench/multigpu_report.py) and the logs; exits 3 at once, saying so, on a host with fewer than 2 GPUs.
# --backend sim: a dry run without a GPU (2 simulated devices; only the peer-copy part can run there, and its
# figures are no GPU claim). --quick: smaller sizes. FARGPU_COMMIT=<sha> names the commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/multigpu_gpu.sh OUT [--backend cuda|sim] [--quick]}" && cd "$1" && pwd)
shift
BACKEND=cuda; QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --quick) QUICK=--quick; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
REPO=$PWD
W=/tmp/fargpu-multigpu; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
log() { echo "== $*"; }
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }

if [ "$BACKEND" = cuda ]; then
  NGPU=$("$PY" -c "import ctypes; cu = ctypes.CDLL('libcuda.so.1'); n = ctypes.c_int(0)
print(n.value if cu.cuInit(0) == 0 and cu.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0)" 2>/dev/null || echo 0)
  if [ "${NGPU:-0}" -lt 2 ]; then
    echo "bench/multigpu_gpu.sh needs a host with at least 2 GPUs; this one has ${NGPU:-0}: nothing was run"
    echo "{\"error\": \"needs 2 GPUs, the host has ${NGPU:-0}\", \"backend\": \"$BACKEND\"}" >"$OUT/multigpu_gpu.json"
    exit 3
  fi
  log "$NGPU GPUs"
fi

. bench/gpu_prepare.sh
gpu_prepare || exit 1
gpu_bench_env
if [ "$BACKEND" = sim ]; then export FARGPU_SIM_DEVICES=2; fi  # two simulated devices

log "start node server (backend $BACKEND)"
TOKEN=multigpu-run-token
PORT=7327
FARGPU_TOKEN=$TOKEN "$PY" -P -m fargpu.server --backend "$BACKEND" --listen 127.0.0.1:$PORT --metrics-port 0 \
  >"$OUT/server.log" 2>&1 &
SRV=$!
for i in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
REMOTE=(env LD_LIBRARY_PATH="$STUB" LD_PRELOAD="$STUB/libcuda.so.1" FARGPU_SERVER=127.0.0.1:$PORT FARGPU_TOKEN=$TOKEN
        FARGPU_LOG=info)
report() { "$PY" bench/multigpu_report.py "$OUT" --stub-dir "$STUB" --backend "$BACKEND"; }

MIB=256; [ -n "$QUICK" ] && MIB=64
log "peer copies: native ($(elapsed) s)"
timeout 120 "${NATIVE[@]}" "$PY" bench/multigpu_peer.py --mib $MIB >"$OUT/peer_native.json" 2>"$OUT/peer_native.err" \
  || echo "peer native failed (rc $?): $(tail -2 "$OUT/peer_native.err")"
log "peer copies: through fargpu ($(elapsed) s)"
timeout 120 "${REMOTE[@]}" FARGPU_PROOF_FILE="$OUT/proof-peer.jsonl" "$PY" bench/multigpu_peer.py --mib $MIB \
  >"$OUT/peer_fargpu.json" 2>"$OUT/peer_fargpu.err" || echo "peer fargpu failed (rc $?): $(tail -2 "$OUT/peer_fargpu.err")"
report >/dev/null 2>&1

if [ "$BACKEND" = cuda ] && "$PY" -c "import torch, torch.distributed" 2>/dev/null; then
  P=29517
  for mode in allreduce ddp; do
    for side in native fargpu; do
      P=$((P + 1))
      log "$mode: $side ($(elapsed) s)"
      if [ $side = native ]; then RUN=(env); else RUN=("${REMOTE[@]}" FARGPU_PROOF_FILE="$OUT/proof-$mode.jsonl"); fi
      timeout 240 "${RUN[@]}" "$PY" bench/multigpu_torch.py $mode $QUICK --port $P >"$OUT/${mode}_$side.json" \
        2>"$OUT/${mode}_$side.err" || echo "$mode $side failed (rc $?): $(tail -3 "$OUT/${mode}_$side.err")"
      report >/dev/null 2>&1
    done
  done
else
  echo "(the NCCL all-reduce and DDP parts skipped: no torch here, or not on GPUs)"
fi

kill $SRV 2>/dev/null; wait $SRV 2>/dev/null
log "report ($(elapsed) s)"
report
