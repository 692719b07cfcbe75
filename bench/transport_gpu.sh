#!/usr/bin/env bash
# bench/transport_gpu.sh OUT [--backend cuda|sim] [--quick] — issue 13's proof run, one command on the GPU host.
# Builds the native parts (host gcc, CUDA headers) and the bench programs, starts a node server (TCP and a unix
# socket), then in the same run: the raw transport floors (bench/floors.c); bench/transport.c natively and through
# fargpu over TCP with 1, 2, 4 and 8 streams, a unix socket and shared memory (256 MiB pinned/pageable copies both
# ways, 64 B copies, the sync round trip, copies and kernels overlapping on 4 streams); PyTorch (a 2 GiB tensor
# there and back, model.cuda() of a 2.7 GB model) natively, over TCP and over shared memory; and TCP and shared
# memory with spin-before-block on both sides; and bench/small_calls.sh (the sync round trip and 64 B copies over TCP,
# unix, shared memory with and without the doorbell, against the ping-pong floors of the same run, 3 rounds) into
# OUT/small/small_calls.json, which the report takes in. Every remote client
# writes a proof file (it never loaded the real driver). A failing part is recorded and the rest goes on.
# Writes OUT/transport_gpu.json (bench/transport_report.py) and the logs. FARGPU_COMMIT=<sha> names the commit.
# --backend sim is a dry run on a machine without a GPU: the simulated device stands in for the driver on both
# sides (its figures are no GPU claim); --quick shrinks the copies (64 MiB) and the PyTorch sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:?usage: bench/transport_gpu.sh OUT [--backend cuda|sim] [--quick]}" && cd "$1" && pwd)
shift
BACKEND=cuda; QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
REPO=$PWD
W=/tmp/fargpu-transport; rm -rf "$W"; mkdir -p "$W"
PY=${PYTHON:-python3}
STREAMS="1 2 4 8"
log() { echo "== $*"; }
T0=$(date +%s)

. bench/gpu_prepare.sh
gpu_prepare || exit 1
gpu_bench_env

log "build bench programs"
gpu_bench_kernels
gpu_build_transport || exit 1
gcc -O2 -std=c11 -D_GNU_SOURCE -o "$W/floors" bench/floors.c -lpthread || exit 1

if [ $QUICK = 1 ]; then export FARGPU_BENCH_MB=64 FARGPU_TORCH_GIB=0.25 FARGPU_TORCH_LAYERS=2; FLOOR_MIB=256
else FLOOR_MIB=1024; fi

log "start node server (backend $BACKEND)"
TOKEN=transport-run-token
PORT=7317
SOCK="$W/fargpu.sock"
FARGPU_TOKEN=$TOKEN "$PY" -P -m fargpu.server --backend "$BACKEND" --listen 127.0.0.1:$PORT --unix "$SOCK" \
  --metrics-port 0 >"$OUT/server.log" 2>&1 &
SRV=$!
for i in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && [ -S "$SOCK" ] && break; sleep 0.2; done
# remote NAME WHAT: sets REMOTE, the environment of a client through fargpu over transport NAME (the stub first
# on LD_LIBRARY_PATH and preloaded) with its proof file.
remote() {
  local ep=127.0.0.1:$PORT extra=FARGPU_STREAMS=1
  case "$1" in
    tcp*) extra=FARGPU_STREAMS=${1#tcp} ;;
    unix) ep=$SOCK; extra=FARGPU_SHM_MB=0 ;;
    shm) ep=$SOCK; extra=FARGPU_SHM_MB=${FARGPU_SHM_MB:-1024} ;;
  esac
  REMOTE=(env LD_LIBRARY_PATH="$STUB" LD_PRELOAD="$STUB/libcuda.so.1" FARGPU_SERVER="$ep" FARGPU_TOKEN=$TOKEN
          FARGPU_PROOF_FILE="$OUT/proof-$2-$1.jsonl" FARGPU_STATS=1 FARGPU_LOG=info "$extra")
}

# Parts run most important first; after each one the report is written again, so a run cut short (the GPU host
# allows 10 minutes a command) still leaves OUT/transport_gpu.json. Optional parts are skipped once the run has
# used FARGPU_BENCH_BUDGET_S (default 420 s).
BUDGET=${FARGPU_BENCH_BUDGET_S:-420}
report() { "$PY" bench/transport_report.py "$OUT" --stub-dir "$STUB" --backend "$BACKEND" --streams $STREAMS "$@"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
bench_remote() {  # NAME [extra env...]: bench/transport.c through fargpu over transport NAME
  local t=$1; shift
  log "transport bench: fargpu over $t ($(elapsed) s)"
  remote "${t%spin}" "transport$([ "${t%spin}" != "$t" ] && echo -spin)"
  timeout 150 "${REMOTE[@]}" "$@" "$W/transport" "$W/bench_kernels.ptx" $KERNELS >"$OUT/transport_$t.json" \
    2>"$OUT/transport_$t.err" || echo "$t failed (rc $?): $(tail -2 "$OUT/transport_$t.err")"
  report >/dev/null 2>&1
}
torch_run() {  # NAME: PyTorch natively (native) or through fargpu over tcp4 (tcp) or shared memory (shm)
  log "PyTorch: $1 ($(elapsed) s)"
  if [ "$1" = native ]; then
    timeout 240 "$PY" bench/transport_torch.py >"$OUT/torch_native.json" 2>"$OUT/torch_native.err" \
      || echo "torch native failed: $(tail -2 "$OUT/torch_native.err")"
  else
    remote "$([ "$1" = tcp ] && echo tcp4 || echo "$1")" torch
    timeout 240 "${REMOTE[@]}" "$PY" bench/transport_torch.py >"$OUT/torch_$1.json" 2>"$OUT/torch_$1.err" \
      || echo "torch $1 failed: $(tail -2 "$OUT/torch_$1.err")"
  fi
  report >/dev/null 2>&1
}

log "raw transport floors"
timeout 120 "$W/floors" $FLOOR_MIB 8 >"$OUT/floors.json" 2>"$OUT/floors.err" || echo "floors failed (rc $?)"
log "transport bench: native"
timeout 150 "${NATIVE[@]}" "$W/transport" "$W/bench_kernels.ptx" $KERNELS >"$OUT/transport_native.json" \
  2>"$OUT/transport_native.err" || echo "native failed (rc $?): $(tail -2 "$OUT/transport_native.err")"
for t in tcp1 tcp4 shm unix; do bench_remote $t; done
log "small calls against the floors ($(elapsed) s)"
SMALL_CALLS_REUSE="$W/build" SMALL_CALLS_PORT=7320 timeout 180 bash bench/small_calls.sh "$OUT/small" \
  --backend "$BACKEND" --rounds 3 >"$OUT/small_calls.log" 2>&1 || echo "small calls failed: $(tail -3 "$OUT/small_calls.log")"
report >/dev/null 2>&1
TORCH=0
"$PY" -c "import torch" 2>/dev/null && [ "$BACKEND" = cuda ] && TORCH=1
if [ $TORCH = 1 ]; then for t in native tcp shm; do torch_run $t; done
else echo "(PyTorch part skipped: no torch here, or not on a GPU)"; fi
for t in tcp2 tcp8; do
  if [ "$(elapsed)" -lt "$BUDGET" ]; then bench_remote $t; else echo "(skipped $t: time budget)"; fi
done

# TCP (1 stream) and shared memory with both sides spinning 30 µs before they block for a message
# (FARGPU_SPIN_US on the client, FARGPU_WORKER_SPIN_US on the node): whether that pays here decides its default.
if [ "$(elapsed)" -lt "$BUDGET" ]; then
  SPORT=7318
  SSOCK="$W/fargpu-spin.sock"
  FARGPU_TOKEN=$TOKEN FARGPU_WORKER_SPIN_US=30 "$PY" -P -m fargpu.server --backend "$BACKEND" \
    --listen 127.0.0.1:$SPORT --unix "$SSOCK" --metrics-port 0 >"$OUT/server_spin.log" 2>&1 &
  SSRV=$!
  for i in $(seq 1 150); do (echo >/dev/tcp/127.0.0.1/$SPORT) 2>/dev/null && [ -S "$SSOCK" ] && break; sleep 0.2; done
  bench_remote tcp1spin FARGPU_SERVER=127.0.0.1:$SPORT FARGPU_SPIN_US=30
  bench_remote shmspin FARGPU_SERVER="$SSOCK" FARGPU_SPIN_US=30
  kill $SSRV 2>/dev/null; wait $SSRV 2>/dev/null
else
  echo "(skipped the spinning variants: time budget)"
fi

kill $SRV 2>/dev/null; wait $SRV 2>/dev/null
log "report ($(elapsed) s)"
report
RC=$?
"$PY" bench/plot_transport.py "$OUT/transport_gpu.json" 2>/dev/null || echo "(no plot: matplotlib is not installed here)"
exit $RC
